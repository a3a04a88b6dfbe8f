"""kinetics_jax: Qwen3 in JAX/Flax NNX for the Kinetics study of test-time scaling.

    import kinetics_jax as kj
    model = kj.load_hf_checkpoint("Qwen3-0.6B/", dtype=jnp.bfloat16)
    logits = model(input_ids)                      # float32[B, T, vocab]

On a pod: kj.distributed.initialize(), mesh = kj.distributed.make_mesh((data, model)), then pass mesh= to
load_model / load_checkpoint and generate.
"""

from kinetics_jax import distributed
from kinetics_jax.attention import AttentionConfig
from kinetics_jax.checkpoint import (CheckpointError, convert_hf_checkpoint, load_checkpoint, load_hf_checkpoint,
                                     load_model, save_checkpoint)
from kinetics_jax.config import Qwen3Config
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.sampling import GenerationResult, RepetitionStop, SamplingConfig, best_of_n, generate, long_cot
from kinetics_jax.tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = ["AttentionConfig", "CheckpointError", "GenerationResult", "Qwen3Config", "Qwen3ForCausalLM",
           "RepetitionStop", "SamplingConfig", "Tokenizer", "best_of_n", "convert_hf_checkpoint", "generate",
           "load_checkpoint", "load_hf_checkpoint", "load_model", "long_cot", "save_checkpoint", "distributed"]
