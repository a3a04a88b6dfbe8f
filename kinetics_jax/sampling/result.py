"""`GenerationResult`: what `generate` returns, whichever engine ran it."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from kinetics_jax.policies import AttentionConfig
from kinetics_jax.sampling.scheduler import SchedulerStats


SKIPPED = "skipped"  # the finish reason of a (prompt, sample) that generate's `skip` left out


class FinishedSample(NamedTuple):
    """One (prompt, sample) sequence as generate's on_finish gets it: prompt (its index in the request), sample,
    tokens (the generated ids, the stop token included) and finish_reason ("eos" | "length" | "repetition")."""

    prompt: int
    sample: int
    tokens: list[int]
    finish_reason: str


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """tokens int32[P, N, T] (-1 after a sample's end), lengths int32[P, N] (generated tokens, the stop token
    included), finish_reasons str[P, N] ("eos" | "length" | "repetition"; "skipped", length 0, for a pair
    generate's `skip` left out), attended_tokens int64[steps, layers]:
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

    def finished_samples(self) -> list[FinishedSample]:
        """Every sample that ran, in (prompt, sample) order."""
        p, n = self.lengths.shape
        return [FinishedSample(i, s, self.sequences(i, s), str(self.finish_reasons[i, s]))
                for i in range(p) for s in range(n) if self.finish_reasons[i, s] != SKIPPED]
