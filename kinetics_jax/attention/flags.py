"""absl flags for the decode-attention policy, shared by the scripts:

    --attention=block_topk --block_topk=64 --block_size=16 --sink=4 --local=0 --score=mean --dense_layers=0 \
        --attention_backend=pallas

Call `define_flags()` at import time of a script, and `config_from_flags()` in main (a bad combination raises
ValueError naming the field).
"""

from __future__ import annotations

from absl import flags

from kinetics_jax.attention.policies import BACKENDS, KINDS, SCORES, AttentionConfig

FLAGS = flags.FLAGS


def define_flags() -> None:
    defaults = AttentionConfig()
    flags.DEFINE_enum("attention", defaults.kind, KINDS, "Decode attention policy (prefill is always dense).")
    flags.DEFINE_integer("sink", defaults.sink, "Tokens always kept at the start (sparse policies).", lower_bound=0)
    flags.DEFINE_integer("local", defaults.local, "Tokens always kept at the end (sparse policies).", lower_bound=0)
    flags.DEFINE_integer("topk", None, "Tokens chosen per step (--attention=topk).", lower_bound=1)
    flags.DEFINE_integer("block_size", defaults.block_size, "Tokens per block = KV cache page size.",
                         lower_bound=1)
    flags.DEFINE_integer("block_topk", None, "Blocks chosen per step (--attention=block_topk).", lower_bound=1)
    flags.DEFINE_enum("score", None, SCORES, "Block score (--attention=block_topk; default mean).")
    flags.DEFINE_list("dense_layers", [str(i) for i in defaults.dense_layers], "Layers that stay dense.")
    flags.DEFINE_enum("attention_backend", defaults.backend, BACKENDS,
                      "xla (pure JAX) or pallas (Triton on GPU, Mosaic on TPU, interpret mode on CPU).")
    flags.DEFINE_integer("tile_tokens", None, "KV tokens a decode kernel reads per loop iteration (a power of two "
                         ">= 16; default: each kernel's own).", lower_bound=16)


def config_from_flags() -> AttentionConfig:
    """The AttentionConfig the flags describe."""
    return AttentionConfig(kind=FLAGS.attention, sink=FLAGS.sink, local=FLAGS.local, topk=FLAGS.topk,
                           block_size=FLAGS.block_size, block_topk=FLAGS.block_topk, score=FLAGS.score,
                           dense_layers=tuple(int(i) for i in FLAGS.dense_layers),
                           backend=FLAGS.attention_backend, tile_tokens=FLAGS.tile_tokens)
