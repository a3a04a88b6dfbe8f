"""Pricing test-time scaling (KINETICS.md §2): the exact eFLOPs model (`analytic`) and measured counters
(`counters`: XLA cost analysis of one decode step, jax.profiler device time)."""

from kinetics_jax.cost.analytic import (HARDWARE, CostBreakdown, Hardware, from_counters, paper_dense_eflops,
                                        paper_params, phi, tts_cost)
from kinetics_jax.cost.counters import ProfileReport, StepCost, decode_step_cost, profile

__all__ = ["HARDWARE", "CostBreakdown", "Hardware", "ProfileReport", "StepCost", "decode_step_cost",
           "from_counters", "paper_dense_eflops", "paper_params", "phi", "profile", "tts_cost"]
