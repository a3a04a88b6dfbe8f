"""The Kinetics rule: at a budget c, each query takes the best metric over all configurations of a model whose cost
on that query is <= c, or 0 if none fits (`query_optimum`), and the configuration that gives it (`query_choice`:
among equal metrics the cheapest)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kinetics_jax.scaling.points import ConfigPoints, stacked


def query_choice(points: Sequence[ConfigPoints], budget: float, cost_model: str) -> np.ndarray:
    """int[Q]: per query, the index into `points` (configurations of one model) of its best configuration with
    cost <= budget (among equal metrics the cheapest), or -1 when none fits or the best metric is 0."""
    metric, cost = stacked(points, cost_model)
    affordable = cost <= budget
    best = np.where(affordable, metric, -np.inf).max(axis=0)
    candidates = affordable & (metric == best)
    choice = np.where(candidates, cost, np.inf).argmin(axis=0)
    return np.where(np.isfinite(best) & (best > 0), choice, -1)


def query_optimum(points: Sequence[ConfigPoints], budget: float, cost_model: str) -> np.ndarray:
    """float[Q]: per query, the best metric over the configurations (of one model) with cost <= budget, 0 if none."""
    metric, cost = stacked(points, cost_model)
    return np.where(cost <= budget, metric, 0.0).max(axis=0)
