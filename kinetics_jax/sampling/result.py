"""`GenerationResult`: what `generate` returns, whichever engine ran it."""

from __future__ import annotations

import dataclasses

import numpy as np

from kinetics_jax.policies import AttentionConfig
from kinetics_jax.sampling.scheduler import SchedulerStats


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """tokens int32[P, N, T] (-1 after a sample's end), lengths int32[P, N] (generated tokens, the stop token
    included), finish_reasons str[P, N] ("eos" | "length" | "repetition"), attended_tokens int64[steps, layers]:
    KV tokens read by each layer at each decode step j of a sample (steps = max length - 1), summed over the
    samples that ran it (with the continuous engine, a preempted sample's steps that were recomputed count as
    often as they ran); prompt_lengths int[P]; attention: the policy the run used (the cost model reads it from
    here); stats: the continuous engine's scheduling counters (None for the static batch)."""

    tokens: np.ndarray
    lengths: np.ndarray
    finish_reasons: np.ndarray
    attended_tokens: np.ndarray
    prompt_lengths: np.ndarray
    attention: AttentionConfig = AttentionConfig()
    stats: SchedulerStats | None = None

    def sequences(self, p: int, s: int) -> list[int]:
        """The generated ids of sample s of prompt p."""
        return self.tokens[p, s, :self.lengths[p, s]].tolist()
