"""Sampling: token samplers (pure functions); the decode engine and strategies build on them."""

from kinetics_jax.sampling.samplers import SamplingConfig, filtered_logits, sample, sample_keys

__all__ = ["SamplingConfig", "filtered_logits", "sample", "sample_keys"]
