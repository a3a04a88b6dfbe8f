"""Pricing test-time scaling (docs/cost_model.md): the exact eFLOPs model (`analytic`, pure numpy) and measured
counters (`counters`: XLA cost analysis of one decode step, jax.profiler device time; imported on first use, so
`import kinetics_jax.cost` does not load jax)."""

from __future__ import annotations

import importlib
from typing import Any

from kinetics_jax.cost.analytic import (HARDWARE, CostBreakdown, Hardware, from_counters, paper_dense_eflops,
                                        paper_params, phi, resolve_hardware, tts_cost)

_COUNTERS = ("ProfileReport", "StepCost", "decode_step_cost", "profile")

__all__ = ["HARDWARE", "CostBreakdown", "Hardware", "ProfileReport", "StepCost", "decode_step_cost",
           "from_counters", "paper_dense_eflops", "paper_params", "phi", "profile", "resolve_hardware", "tts_cost"]


def __getattr__(name: str) -> Any:
    if name in _COUNTERS:
        value = getattr(importlib.import_module("kinetics_jax.cost.counters"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kinetics_jax.cost' has no attribute {name!r}")
