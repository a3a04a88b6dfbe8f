"""absl flags for the decode-attention policy, shared by the scripts:

    --attention=block_topk-64:score=quest --dense_layers=0 --attention_backend=pallas

`--attention` is a policy label (kinetics_jax.policies.base: <kind>[-<tokens>][:<field>=<value>,...]), checked
when the flags are parsed. Call `define_flags()` at import time of a script and `config_from_flags()` in main.
"""

from __future__ import annotations

from absl import flags

from kinetics_jax.policies.base import REGISTRY, parse_policy
from kinetics_jax.policies.config import BACKENDS, AttentionConfig

FLAGS = flags.FLAGS


def _label_ok(label: str) -> bool:
    try:
        parse_policy(label)
    except (ValueError, TypeError) as e:
        raise flags.ValidationError(str(e)) from None
    return True


def define_flags() -> None:
    """--attention (one policy label) and the run flags of `define_run_flags`."""
    flags.DEFINE_string("attention", AttentionConfig().policy.label(),
                        f"Decode attention policy label ({', '.join(REGISTRY)}), e.g. block_topk-64, "
                        "block_topk-64:score=quest,sink=8, topk-256, sliding_window-512 (prefill is always dense).")
    flags.register_validator("attention", _label_ok)
    define_run_flags()


def define_run_flags() -> None:
    """How the policies run: --dense_layers, --attention_backend, --page_size, --tile_tokens (scripts that take
    several policy labels, such as the study, define these and their own label list)."""
    defaults = AttentionConfig()
    flags.DEFINE_list("dense_layers", [str(i) for i in defaults.dense_layers], "Layers that stay dense.")
    flags.DEFINE_enum("attention_backend", defaults.backend, BACKENDS,
                      "xla (pure JAX) or pallas (Triton on GPU, Mosaic on TPU, interpret mode on CPU).")
    flags.DEFINE_integer("page_size", None, "Tokens per KV cache page (a power of two; default: the policy's "
                         "block size, else 16).", lower_bound=1)
    flags.DEFINE_integer("tile_tokens", None, "KV tokens a decode kernel reads per loop iteration (a power of two "
                         ">= 16; default: each kernel's own).", lower_bound=16)


def label_list_ok(labels: list[str]) -> bool:
    """A flag validator for a list of policy labels."""
    return all(_label_ok(label) for label in labels)


def config_from_flags(label: str | None = None, backend: str | None = None) -> AttentionConfig:
    """The AttentionConfig of `label` (default: --attention) and the run flags (backend: instead of
    --attention_backend)."""
    return AttentionConfig.parse(label or FLAGS.attention, dense_layers=tuple(int(i) for i in FLAGS.dense_layers),
                                 backend=backend or FLAGS.attention_backend, page_size=FLAGS.page_size,
                                 tile_tokens=FLAGS.tile_tokens)
