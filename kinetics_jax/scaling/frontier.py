"""Test-time scaling frontiers under the FLOPs and eFLOPs cost models (docs/evaluation.md, Kinetics arXiv
2506.05333).

A model's curve is its accuracy under the Kinetics rule (`optima.py`, `curves.py`: the mean over queries of each
query's best affordable metric), evaluated on a log-spaced grid of budgets (`cost_grid`, reaching 2 points beyond
the costs at each end), then smoothed over 3 points (`smooth3`: a centered 3-point moving average, the two end
points averaged over the 2 points they have, then a running max; the moving average of a non-decreasing curve is
non-decreasing, the running max only removes float rounding). The cross-model Pareto frontier is the max over the
models' smoothed curves at each budget, and the argmax is the optimal model there (ties: the model with fewer
parameters).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from kinetics_jax.scaling.curves import budget_curve
from kinetics_jax.scaling.points import ConfigPoints, group_by_model


def cost_grid(points: Sequence[ConfigPoints], cost_model: str, num: int) -> np.ndarray:
    """float[num] budgets with a constant ratio between neighbours: num - 4 of them span the cheapest positive
    per-query cost to the most expensive one (where every configuration fits every query), plus 2 more on each
    side, so that the 3-point smoothing window at each end lies on a plateau of every curve."""
    if num < 6:
        raise ValueError(f"a cost grid needs >= 6 points, got {num}")
    costs = np.concatenate([p.cost(cost_model) for p in points])
    costs = costs[costs > 0]
    lo, hi = float(costs.min()), float(costs.max())
    hi = hi if hi > lo else 10 * lo
    step = (math.log(hi) - math.log(lo)) / (num - 5)
    grid = np.exp(math.log(lo) + step * (np.arange(num) - 2))
    grid[2], grid[-3] = lo, hi  # exactly: exp(log(hi)) may round below hi, where the dearest config misses
    return grid


def smooth3(curve: np.ndarray) -> np.ndarray:
    """Centered 3-point moving average along the last axis (each end point: the mean of itself and its one
    neighbour), then a running max, which keeps a non-decreasing input non-decreasing through float rounding."""
    curve = np.asarray(curve, np.float64)
    if curve.shape[-1] < 2:
        return curve.copy()
    edge = np.zeros_like(curve[..., :1])
    padded = np.concatenate([edge, curve, edge], axis=-1)
    counts = np.full(curve.shape[-1], 3.0)
    counts[[0, -1]] = 2.0
    mean = (padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]) / counts
    return np.maximum.accumulate(mean, axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class Frontier:
    """Model curves and their cross-model Pareto frontier on one cost grid.

    grid: float[G] budgets per query (FLOPs or eFLOPs); models: by paper_params ascending; raw: float[M, G] the
    exact mean over queries of the per-query optimum; smoothed: `smooth3(raw)`. The frontier is the max over
    models of `smoothed`; ties go to the model listed first (fewer parameters).
    """

    cost_model: str
    grid: np.ndarray
    models: tuple[str, ...]
    params: tuple[int, ...]
    raw: np.ndarray
    smoothed: np.ndarray

    @property
    def accuracy(self) -> np.ndarray:
        """float[G]: the frontier, max over models of the smoothed curves."""
        return self.smoothed.max(axis=0)

    @property
    def optimal(self) -> tuple[str | None, ...]:
        """The argmax model at each budget (None where the frontier is 0)."""
        best = self.smoothed.argmax(axis=0)
        return tuple(self.models[i] if acc > 0 else None for i, acc in zip(best, self.accuracy))

    def segments(self) -> list[tuple[str, float, float, float, float]]:
        """Runs of the same optimal model: (model, first budget, last budget, accuracy there at first and last)."""
        out: list[tuple[str, float, float, float, float]] = []
        accuracy, optimal = self.accuracy, self.optimal
        for i, model in enumerate(optimal):
            if model is None:
                continue
            if i > 0 and optimal[i - 1] == model:
                out[-1] = (model, out[-1][1], float(self.grid[i]), out[-1][3], float(accuracy[i]))
            else:
                out.append((model, float(self.grid[i]), float(self.grid[i]), float(accuracy[i]), float(accuracy[i])))
        return out


def pareto_frontier(points: Sequence[ConfigPoints], cost_model: str, grid: ArrayLike) -> Frontier:
    """Each model's curve under the rule on `grid` and the cross-model frontier (configurations must share their
    queries)."""
    grid = np.asarray(grid, np.float64)
    by_model = group_by_model(points)
    raw = np.stack([budget_curve(pts, cost_model)(grid) for pts in by_model.values()])
    return Frontier(cost_model=cost_model, grid=grid, models=tuple(by_model),
                    params=tuple(pts[0].params for pts in by_model.values()), raw=raw, smoothed=smooth3(raw))


def policy_frontiers(points: Sequence[ConfigPoints], cost_model: str, grid: ArrayLike) -> dict[str, Frontier]:
    """The frontier of each attention policy's configurations alone ("dense" first, then the sparse labels)."""
    labels = sorted({p.policy for p in points}, key=lambda label: (label != "dense", label))
    return {label: pareto_frontier([p for p in points if p.policy == label], cost_model, grid) for label in labels}
