"""A model's accuracy under the Kinetics rule (`optima.py`) as an exact step function of the budget: the mean over
queries of the per-query optimum, for every budget at once (`budget_curve`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from kinetics_jax.scaling.points import ConfigPoints, stacked


@dataclasses.dataclass(frozen=True, eq=False)
class StepCurve:
    """A model's accuracy under the rule as an exact step function of the budget: accuracy[i] holds for budgets in
    [budgets[i], budgets[i + 1]); below budgets[0] it is 0."""

    budgets: np.ndarray
    accuracy: np.ndarray

    def __call__(self, budget: ArrayLike) -> np.ndarray:
        passed = np.searchsorted(self.budgets, np.asarray(budget, np.float64), side="right")  # breakpoints <= budget
        return np.concatenate([[0.0], self.accuracy])[passed]

    def min_budget(self, level: float, tol: float = 1e-9) -> float:
        """The lowest budget with accuracy >= level (up to tol), inf if never reached."""
        reached = np.nonzero(self.accuracy >= level - tol)[0]
        return float(self.budgets[reached[0]]) if reached.size else math.inf


def budget_curve(points: Sequence[ConfigPoints], cost_model: str) -> StepCurve:
    """The mean over queries of `query_optimum`, for every budget at once: each query's best metric rises only at
    the costs of its configurations, so the mean is a step function with breakpoints at those costs."""
    metric, cost = stacked(points, cost_model)
    order = np.argsort(cost, axis=0, kind="stable")
    cost_sorted = np.take_along_axis(cost, order, axis=0)
    best = np.maximum.accumulate(np.maximum(np.take_along_axis(metric, order, axis=0), 0.0), axis=0)
    rise = np.diff(best, axis=0, prepend=0.0)  # [C, Q]: how much each query's best rises at that cost
    at, up = cost_sorted[rise > 0], rise[rise > 0] / metric.shape[1]
    order = np.argsort(at, kind="stable")
    at, total = at[order], np.cumsum(up[order])
    budgets = np.unique(at)
    ends = np.searchsorted(at, budgets, side="right") - 1  # the last event at each distinct cost
    return StepCurve(budgets=budgets, accuracy=total[ends])
