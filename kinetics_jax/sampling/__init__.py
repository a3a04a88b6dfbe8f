"""Sampling: token samplers (pure functions), the engine (request planning, prefill, the decode loop, generate) and
strategies over it."""

from kinetics_jax.sampling.engine import GenerationResult, generate
from kinetics_jax.sampling.result import FinishedSample
from kinetics_jax.sampling.samplers import SamplingConfig, filtered_logits, sample, sample_keys
from kinetics_jax.sampling.stops import RepetitionStop
from kinetics_jax.sampling.strategies import best_of_n, long_cot

__all__ = ["FinishedSample", "GenerationResult", "RepetitionStop", "SamplingConfig", "best_of_n", "filtered_logits", "generate",
           "long_cot", "sample", "sample_keys"]
