"""The scaling analysis of one (dataset, strategy) on one hardware: frontiers, optimal models, the costlier ratio,
the iso-cost grid and sigmoid fits (`analyze`), the input of the report (`plots.py`)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from kinetics_jax.scaling.costlier import CostlierRatio, costlier_ratio
from kinetics_jax.scaling.fit import SigmoidFit, fit_sigmoid
from kinetics_jax.scaling.frontier import Frontier, cost_grid, pareto_frontier, policy_frontiers
from kinetics_jax.scaling.isocost import IsoCostGrid, isocost_grid
from kinetics_jax.scaling.points import COST_MODELS, ConfigPoints, align_queries


@dataclasses.dataclass(frozen=True, eq=False)
class Analysis:
    """Everything the report shows for one (dataset, strategy) on one hardware.

    frontiers: cost model -> frontier of the `policy` configurations; policies: cost model -> policy label ->
    frontier of that policy (same grids); ratio: the costlier ratio of the `policy` configurations; fits: cost model
    -> model -> sigmoid law fitted to its raw curve on the grid.
    """

    dataset: str
    strategy: str
    hardware: str
    policy: str
    num_queries: int
    num_configurations: int
    frontiers: dict[str, Frontier]
    policies: dict[str, dict[str, Frontier]]
    ratio: CostlierRatio
    isocost: IsoCostGrid
    fits: dict[str, dict[str, SigmoidFit]]


def analyze(points: Sequence[ConfigPoints], *, grid_points: int = 64, policy: str = "dense",
            levels: int = 50) -> Analysis:
    """Frontiers, optimal models, the costlier ratio, the iso-cost grid and fits of configurations of one dataset
    and strategy. policy: the attention policy label whose configurations make the main frontier ("all": every
    configuration); every policy gets its own frontier in `policies`."""
    kinds = {(p.dataset, p.strategy, p.hardware) for p in points}
    if len(kinds) > 1:
        raise ValueError(f"analyze one dataset, strategy and hardware at a time; got {sorted(kinds)}")
    points = align_queries(points)
    main = list(points) if policy == "all" else [p for p in points if p.policy == policy]
    if not main:
        raise ValueError(f"no configuration has attention policy {policy!r}; found "
                         f"{sorted({p.policy for p in points})} (or use 'all')")
    grids = {cm: cost_grid(points, cm, grid_points) for cm in COST_MODELS}
    frontiers = {cm: pareto_frontier(main, cm, grids[cm]) for cm in COST_MODELS}
    fits = {cm: {m: fit_sigmoid(f.grid, f.raw[i]) for i, m in enumerate(f.models)} for cm, f in frontiers.items()}
    dataset, strategy, hardware = kinds.pop()
    return Analysis(dataset=dataset, strategy=strategy, hardware=hardware, policy=policy,
                    num_queries=len(points[0].queries), num_configurations=len(main), frontiers=frontiers,
                    policies={cm: policy_frontiers(points, cm, grids[cm]) for cm in COST_MODELS},
                    ratio=costlier_ratio(main, levels), isocost=isocost_grid(main), fits=fits)
