"""Test-time scaling strategies of the Kinetics study, as thin layers over `generate`.

- Best-of-N: N independent samples per prompt; the prompt's KV pages are stored once and shared by the N.
- Long chain of thought: one long sample per prompt, with the Kinetics repetition stop on by default (long
  generations from small models often loop, and a looping trace would otherwise burn its whole budget).
"""

from __future__ import annotations

from typing import Any, Sequence

from kinetics_jax.checks import checked_int
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.sampling.engine import GenerationResult, generate
from kinetics_jax.sampling.stops import RepetitionStop


def best_of_n(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], n: int, *, max_new_tokens: int,
              **kwargs: Any) -> GenerationResult:
    """`n` samples of every prompt (an integer >= 1, numpy integers too), sharing its prompt KV. Other keyword
    arguments go to `generate`."""
    n = checked_int(n, "best_of_n's n", minimum=1)
    return generate(model, prompts, num_samples=n, max_new_tokens=max_new_tokens, **kwargs)


def long_cot(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             repetition: RepetitionStop | None = RepetitionStop(), **kwargs: Any) -> GenerationResult:
    """One chain of thought of up to `max_new_tokens` per prompt, stopped early when it loops (pass
    repetition=None to disable). Other keyword arguments go to `generate`."""
    return generate(model, prompts, num_samples=1, max_new_tokens=max_new_tokens, repetition=repetition, **kwargs)
