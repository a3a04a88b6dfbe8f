"""kinetics_jax: Qwen3 in JAX/Flax NNX for the Kinetics study of test-time scaling.

    import kinetics_jax as kj
    model = kj.load_hf_checkpoint("Qwen3-0.6B/", dtype=jnp.bfloat16)
    logits = model(input_ids)                      # float32[B, T, vocab]
    attention = kj.AttentionConfig(kj.policies.BlockTopK(block_topk=4), backend="pallas")

On a pod: kj.sharding.initialize(), mesh = kj.sharding.make_mesh((data, model)), then pass mesh= to
load_model / load_checkpoint and generate.

The names below are imported on first use, so `import kinetics_jax.cost` or `kinetics_jax.scaling` (pure
numpy) does not load jax.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AttentionConfig": "kinetics_jax.policies",
    "CheckpointError": "kinetics_jax.checkpoint",
    "convert_hf_checkpoint": "kinetics_jax.checkpoint",
    "load_checkpoint": "kinetics_jax.checkpoint",
    "load_hf_checkpoint": "kinetics_jax.checkpoint",
    "load_model": "kinetics_jax.checkpoint",
    "save_checkpoint": "kinetics_jax.checkpoint",
    "Qwen3Config": "kinetics_jax.config",
    "Qwen3ForCausalLM": "kinetics_jax.model",
    "FinishedSample": "kinetics_jax.sampling",
    "GenerationResult": "kinetics_jax.sampling",
    "RepetitionStop": "kinetics_jax.sampling",
    "SamplingConfig": "kinetics_jax.sampling",
    "best_of_n": "kinetics_jax.sampling",
    "generate": "kinetics_jax.sampling",
    "long_cot": "kinetics_jax.sampling",
    "Tokenizer": "kinetics_jax.tokenizer",
}
_SUBMODULES = ("attention", "checkpoint", "cost", "eval", "model", "policies", "sampling", "scaling", "sharding",
               "study", "tiny")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"kinetics_jax.{name}")
    else:
        raise AttributeError(f"module 'kinetics_jax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
