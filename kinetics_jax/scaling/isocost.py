"""The iso-cost grid: accuracy (mean metric over queries) and mean per-query cost on a (model size x generation
budget) grid. Model size is `paper_params`; the generation budget is B for long-CoT and k x max_new_tokens (tokens
generated per query at most) for Best-of-N (`ConfigPoints.gen_tokens`)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from kinetics_jax.scaling.points import ConfigPoints, group_by_model


@dataclasses.dataclass(frozen=True, eq=False)
class IsoCostGrid:
    """Accuracy and mean per-query cost on models (rows, by paper_params) x generation budgets (columns, tokens
    per query); float[M, T] each, NaN where a model has no configuration with that budget."""

    models: tuple[str, ...]
    params: tuple[int, ...]
    gen_tokens: tuple[int, ...]
    accuracy: np.ndarray
    flops: np.ndarray
    eflops: np.ndarray


def isocost_grid(points: Sequence[ConfigPoints]) -> IsoCostGrid:
    """One cell per (model, gen_tokens); where several configurations share a cell (runs with other
    max_new_tokens or seeds), the one with the highest accuracy, then the lowest mean eFLOPs."""
    by_model = group_by_model(points)
    tokens = sorted({p.gen_tokens for p in points})
    shape = (len(by_model), len(tokens))
    accuracy, flops, eflops = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for i, pts in enumerate(by_model.values()):
        for j, t in enumerate(tokens):
            cell = [p for p in pts if p.gen_tokens == t]
            if cell:
                best = min(cell, key=lambda p: (-p.metric.mean(), p.eflops.mean()))
                accuracy[i, j], flops[i, j], eflops[i, j] = best.metric.mean(), best.flops.mean(), best.eflops.mean()
    return IsoCostGrid(models=tuple(by_model), params=tuple(pts[0].params for pts in by_model.values()),
                       gen_tokens=tuple(tokens), accuracy=accuracy, flops=flops, eflops=eflops)
