"""The costlier ratio (the paper's "compute-optimal choices cost up to 3x more"; docs/evaluation.md).

For an accuracy level a, the FLOPs-guided planner picks the model, and the budget, that reach a at the lowest FLOPs
budget, and there each query's configuration by the Kinetics rule (`optima.query_choice`: its best affordable
metric; among equals, the fewest FLOPs; none if that metric is 0). Running that choice needs an eFLOPs budget of
the largest eFLOPs cost of the chosen per-query configurations. The ratio is that budget over the lowest eFLOPs
budget at which any model reaches a under the rule. It is >= 1, since the FLOPs-guided choice is itself affordable
at its eFLOPs price. Both budgets are exact (the curves are step functions of the budget, evaluated at their
breakpoints, unsmoothed: `curves.py`). The levels are `levels` evenly spaced accuracies in (0, a_max], a_max the
highest accuracy reachable at all.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from kinetics_jax.scaling.curves import StepCurve, budget_curve
from kinetics_jax.scaling.optima import query_choice
from kinetics_jax.scaling.points import COST_MODELS, ConfigPoints, group_by_model


@dataclasses.dataclass(frozen=True, eq=False)
class CostlierRatio:
    """Per accuracy level (float[L]): the FLOPs-guided model and the eFLOPs budget its choice needs, the
    eFLOPs-optimal model and budget, and their ratio (see the module doc)."""

    levels: np.ndarray
    flops_model: tuple[str, ...]
    flops_choice_eflops: np.ndarray
    eflops_model: tuple[str, ...]
    optimal_eflops: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        return self.flops_choice_eflops / self.optimal_eflops

    @property
    def max(self) -> float:
        return float(self.ratio.max()) if self.levels.size else math.nan

    @property
    def median(self) -> float:
        return float(np.median(self.ratio)) if self.levels.size else math.nan

    @property
    def argmax(self) -> int:
        """Index of the level with the largest ratio (the lowest such level)."""
        return int(self.ratio.argmax())


def _cheapest(curves: Mapping[str, StepCurve], level: float) -> tuple[str, float]:
    """(model, budget): the model reaching `level` at the lowest budget (ties: the higher accuracy there, then
    fewer parameters, the order of `curves`); budget inf if none does."""
    budgets = {m: c.min_budget(level) for m, c in curves.items()}
    model = min(budgets, key=lambda m: (budgets[m], -float(curves[m](budgets[m]))))
    return model, budgets[model]


def _eflops_to_run(points: Sequence[ConfigPoints], flops_budget: float) -> float:
    """The eFLOPs budget that affords every per-query configuration the rule chooses at a FLOPs budget: the
    largest eFLOPs cost among them (0 if no query chooses one)."""
    choice = query_choice(points, flops_budget, "flops")
    eflops = np.stack([p.eflops for p in points])
    chosen = np.where(choice >= 0, eflops[np.maximum(choice, 0), np.arange(choice.size)], 0.0)
    return float(chosen.max())


def costlier_ratio(points: Sequence[ConfigPoints], levels: int = 50) -> CostlierRatio:
    """The eFLOPs price of FLOPs-guided choices over the eFLOPs-optimal price, at `levels` accuracy levels evenly
    spaced in (0, a_max] (configurations must share their queries)."""
    by_model = group_by_model(points)
    curves = {cm: {m: budget_curve(pts, cm) for m, pts in by_model.items()} for cm in COST_MODELS}
    a_max = min(max((float(c.accuracy[-1]) if c.accuracy.size else 0.0) for c in curves[cm].values())
                for cm in COST_MODELS)
    grid = a_max * np.arange(1, levels + 1) / levels if a_max > 0 else np.zeros(0)
    by_flops = [_cheapest(curves["flops"], level) for level in grid]
    by_eflops = [_cheapest(curves["eflops"], level) for level in grid]
    return CostlierRatio(levels=grid, flops_model=tuple(m for m, _ in by_flops),
                         flops_choice_eflops=np.array([_eflops_to_run(by_model[m], b) for m, b in by_flops]),
                         eflops_model=tuple(m for m, _ in by_eflops),
                         optimal_eflops=np.array([b for _, b in by_eflops]))
