"""Pricing the samples of a run: decoding costs per query in FLOPs and eFLOPs (docs/evaluation.md).

cost(Li, L, N) is `tts_cost` of N samples that all generate L tokens after a prompt of Li tokens, with the run's
model and attention policy on one hardware: "flops" = `CostBreakdown.compute_flops`, "eflops" =
`CostBreakdown.eflops` (compute + intensity x KV bytes). `cost_of_samples` gives both as float[2].
"""

from __future__ import annotations

import functools

import numpy as np

from kinetics_jax.policies import AttentionConfig
from kinetics_jax.config import Qwen3Config
from kinetics_jax.cost.analytic import resolve_hardware
from kinetics_jax.cost.analytic import tts_cost
from kinetics_jax.scaling.runs import Run, Sample


@functools.lru_cache(maxsize=None)
def _unit_costs(config: Qwen3Config, attention: AttentionConfig, hardware: str, prompt_len: int,
                gen_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(cost of 1 sample, cost of each further sample), each a read-only float[2] = [FLOPs, eFLOPs], of samples
    that generate gen_len tokens after a shared prompt of prompt_len tokens (cached: the hot path).

    tts_cost of N samples of equal length is exactly affine in N: the prompt's KV reads are shared by the N
    samples, every other term is per sample. So cost(N) = first + (N - 1) * further, from two tts_cost calls.
    """
    def price(n: int) -> np.ndarray:
        c = tts_cost(config, prompt_len=prompt_len, gen_lens=gen_len, num_samples=n, attention=attention,
                     hardware=hardware)
        return np.array([c.compute_flops, c.eflops])

    one = price(1)
    further = price(2) - one
    one.setflags(write=False)
    further.setflags(write=False)
    return one, further


def cost_of_samples(run: Run, sample: Sample, num_samples: int, hardware: str, gen_len: int) -> np.ndarray:
    """float[2] [FLOPs, eFLOPs] of num_samples samples that each generate gen_len tokens after the sample's prompt.
    Lengths below 1 are priced as 1 (tts_cost's first step is always taken)."""
    one, further = _unit_costs(run.config, run.attention, resolve_hardware(hardware).name,
                               max(sample.prompt_length, 1), max(gen_len, 1))
    return one + (num_samples - 1) * further
