"""Sampling: token samplers (pure functions), the prefill + jit decode engine, and strategies over it."""

from kinetics_jax.sampling.engine import GenerationResult, RepetitionStop, generate
from kinetics_jax.sampling.samplers import SamplingConfig, filtered_logits, sample, sample_keys

__all__ = ["GenerationResult", "RepetitionStop", "SamplingConfig", "filtered_logits", "generate", "sample",
           "sample_keys"]
