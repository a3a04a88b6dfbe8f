"""Test-time scaling frontiers under the FLOPs and eFLOPs cost models (KINETICS.md §4, Kinetics arXiv 2506.05333).

Input: runs of evaluation records (`runs.py`: the records sharing (model, dataset, config)); a run contributes several *configurations* of its model, each with a metric and a cost
per query (problem):

- Best-of-N (config.strategy "best_of_n"): with n_q samples of query q and c_q of them correct, every
  k in {1, 2, 4, ...} up to the fewest samples of any query of the run is a configuration:
      metric_q = pass@k = 1 - C(n_q - c_q, k) / C(n_q, k)       (unbiased; `kinetics_jax.eval.metrics.pass_at_k`)
      cost_q   = mean over q's samples i of cost(Li_q, L_i, N = k)
  where cost(Li, L, N) is `tts_cost` of N samples that all generate L tokens after a prompt of Li tokens
  (the paper's accounting: the k trials are priced at each real sample length in turn).
- Long-CoT (config.strategy "long_cot"): every truncation budget B < max_new_tokens of the run (`Run`), and
  B = max_new_tokens itself, is a configuration:
      metric_q = mean over samples of truncation[B]   (`correct` for B = max_new_tokens, and for a sample that
                 stopped by itself within B tokens when its record holds no entry for B)
      cost_q   = mean over samples of cost(Li_q, min(L_i, B), N = 1)
Costs are decoding costs per query: "flops" = `CostBreakdown.compute_flops`, "eflops" = `CostBreakdown.eflops`
(compute + intensity x KV bytes) on one hardware; units FLOPs / eFLOPs per query.

The Kinetics rule (`query_optimum`): at a budget c, each query takes the best metric over all configurations of a
model whose cost on that query is <= c, or 0 if none fits. The model's curve is the mean over queries, evaluated
on a log-spaced grid of budgets (`cost_grid`, reaching 2 points beyond the costs at each end), then smoothed over
3 points (`smooth3`: a centered 3-point moving average, the two end points averaged over the 2 points they have,
then a running max; the moving average of a non-decreasing curve is non-decreasing, the running max only removes
float rounding). The cross-model Pareto frontier is the max over the models' smoothed curves at each budget, and
the argmax is the optimal model there (ties: the model with fewer parameters).

The costlier ratio (`costlier_ratio`; the paper's "compute-optimal choices cost up to 3x more"): for an accuracy
level a, the FLOPs-guided planner picks the model, and the budget, that reach a at the lowest FLOPs budget, and
there each query's configuration by the rule (its best affordable metric; among equals, the fewest FLOPs; none if
that metric is 0). Running that choice needs an eFLOPs budget of the largest eFLOPs cost of the chosen per-query
configurations. The ratio is that budget over the lowest eFLOPs budget at which any model reaches a under the
rule. It is >= 1, since the FLOPs-guided choice is itself affordable at its eFLOPs price. Both budgets are exact
(the curves are step functions of the budget, evaluated at their breakpoints, unsmoothed). The levels are
`levels` evenly spaced accuracies in (0, a_max], a_max the highest accuracy reachable at all.

The iso-cost grid (`isocost_grid`) holds accuracy (mean metric over queries) and mean per-query cost on a
(model size x generation budget) grid: model size is `paper_params`; the generation budget is B for long-CoT and
k x max_new_tokens (tokens generated per query at most) for Best-of-N.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
from typing import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from kinetics_jax.attention import AttentionConfig
from kinetics_jax.config import Qwen3Config
from kinetics_jax.cost.analytic import hardware as resolve_hardware
from kinetics_jax.cost.analytic import paper_params, tts_cost
from kinetics_jax.eval.metrics import pass_at_k
from kinetics_jax.scaling.fit import SigmoidFit, fit_sigmoid
from kinetics_jax.scaling.runs import Run, Sample

log = logging.getLogger(__name__)

COST_MODELS = ("flops", "eflops")


# ------------------------------------------------------------------------------------------------ pricing
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


def _price(run: Run, sample: Sample, num_samples: int, hardware: str, gen_len: int) -> np.ndarray:
    """float[2] [FLOPs, eFLOPs] of num_samples samples that each generate gen_len tokens after the sample's prompt.
    Lengths below 1 are priced as 1 (tts_cost's first step is always taken)."""
    one, further = _unit_costs(run.config, run.attention, resolve_hardware(hardware).name,
                               max(sample.prompt_length, 1), max(gen_len, 1))
    return one + (num_samples - 1) * further


# ------------------------------------------------------------------------------------------------ configurations
@dataclasses.dataclass(frozen=True, eq=False)
class ConfigPoints:
    """One configuration of a model: metric and costs on each query.

    setting: "k=4" (Best-of-N trials) or "B=8192" (long-CoT budget); gen_tokens: tokens generated per query at
    most (k x max_new_tokens, or B); metric, flops, eflops: float[Q] over `queries` (costs per query, in FLOPs and
    eFLOPs on `hardware`).
    """

    model: str
    params: int
    dataset: str
    strategy: str
    policy: str
    setting: str
    gen_tokens: int
    hardware: str
    queries: tuple[str, ...]
    metric: np.ndarray
    flops: np.ndarray
    eflops: np.ndarray

    def cost(self, cost_model: str) -> np.ndarray:
        if cost_model not in COST_MODELS:
            raise ValueError(f"unknown cost model {cost_model!r}; known: {COST_MODELS}")
        return self.flops if cost_model == "flops" else self.eflops

    def select(self, queries: Sequence[str]) -> "ConfigPoints":
        """The same configuration restricted to (and ordered as) `queries`."""
        index = {q: i for i, q in enumerate(self.queries)}
        take = np.array([index[q] for q in queries], np.int64)
        return dataclasses.replace(self, queries=tuple(queries), metric=self.metric[take], flops=self.flops[take],
                                   eflops=self.eflops[take])


def _points(run: Run, setting: str, gen_tokens: int, hardware: str, metric: list[float],
            costs: list[np.ndarray]) -> ConfigPoints:
    costs_arr = np.asarray(costs, np.float64).reshape(len(costs), 2)
    return ConfigPoints(model=run.model, params=paper_params(run.config), dataset=run.dataset, strategy=run.strategy,
                        policy=run.policy, setting=setting, gen_tokens=gen_tokens,
                        hardware=resolve_hardware(hardware).name, queries=tuple(run.problems),
                        metric=np.asarray(metric, np.float64), flops=costs_arr[:, 0], eflops=costs_arr[:, 1])


def best_of_n_points(run: Run, hardware: str = "B200") -> list[ConfigPoints]:
    """One configuration per k in {1, 2, 4, ...} <= the fewest samples of any query (see the module doc)."""
    n_min = min(len(samples) for samples in run.problems.values())
    ks = [2 ** i for i in range(int(math.log2(n_min)) + 1)]
    points = []
    for k in ks:
        metric, costs = [], []
        for samples in run.problems.values():
            metric.append(pass_at_k(len(samples), sum(s.correct for s in samples), k))
            costs.append(np.mean([_price(run, s, k, hardware, s.length) for s in samples], axis=0))
        points.append(_points(run, f"k={k}", k * run.max_new_tokens, hardware, metric, costs))
    return points


def _correct_within(sample: Sample, budget: int, run: Run, problem_id: str) -> bool:
    if budget in sample.truncation:
        return sample.truncation[budget]
    if sample.length <= budget:
        return sample.correct  # the trace ended within the budget: cutting it there changes nothing
    raise ValueError(f"{run.describe()}: problem {problem_id!r} has a sample of {sample.length} tokens without a "
                     f"truncation entry for budget {budget}")


def long_cot_points(run: Run, hardware: str = "B200") -> list[ConfigPoints]:
    """One configuration per truncation budget B < max_new_tokens of the run, and B = max_new_tokens."""
    budgets = [b for b in run.truncation_budgets if 0 < b < run.max_new_tokens] + [run.max_new_tokens]
    points = []
    for budget in budgets:
        metric, costs = [], []
        for problem_id, samples in run.problems.items():
            if budget == run.max_new_tokens:
                metric.append(np.mean([s.correct for s in samples]))
            else:
                metric.append(np.mean([_correct_within(s, budget, run, problem_id) for s in samples]))
            costs.append(np.mean([_price(run, s, 1, hardware, min(s.length, budget)) for s in samples], axis=0))
        points.append(_points(run, f"B={budget}", budget, hardware, metric, costs))
    return points


def run_points(run: Run, hardware: str = "B200") -> list[ConfigPoints]:
    """The configurations of a run under its own strategy."""
    return best_of_n_points(run, hardware) if run.strategy == "best_of_n" else long_cot_points(run, hardware)


def align_queries(points: Sequence[ConfigPoints]) -> list[ConfigPoints]:
    """Every configuration restricted to the queries that all of them have (logged when some are dropped)."""
    if not points:
        raise ValueError("no configurations to analyze")
    common = set(points[0].queries).intersection(*(p.queries for p in points[1:]))
    if not common:
        raise ValueError("the configurations share no query")
    dropped = set().union(*(p.queries for p in points)) - common
    if dropped:
        log.warning("%d queries are missing from some runs and are left out: %s", len(dropped),
                    ", ".join(sorted(dropped)[:10]) + (" ..." if len(dropped) > 10 else ""))
    queries = sorted(common)
    return [p if p.queries == tuple(queries) else p.select(queries) for p in points]


def _by_model(points: Sequence[ConfigPoints]) -> dict[str, list[ConfigPoints]]:
    """Configurations per model, models ordered by paper_params (then name)."""
    groups: dict[str, list[ConfigPoints]] = collections.defaultdict(list)
    for p in points:
        groups[p.model].append(p)
    return {m: groups[m] for m in sorted(groups, key=lambda m: (groups[m][0].params, m))}


def _stack(points: Sequence[ConfigPoints], cost_model: str) -> tuple[np.ndarray, np.ndarray]:
    """(metric, cost), each float[C, Q], of configurations over the same queries."""
    if len({p.queries for p in points}) != 1:
        raise ValueError("configurations must share their queries (use align_queries)")
    return np.stack([p.metric for p in points]), np.stack([p.cost(cost_model) for p in points])


# ------------------------------------------------------------------------------------------------ the Kinetics rule
def query_choice(points: Sequence[ConfigPoints], budget: float, cost_model: str) -> np.ndarray:
    """int[Q]: per query, the index into `points` (configurations of one model) of its best configuration with
    cost <= budget (among equal metrics the cheapest), or -1 when none fits or the best metric is 0."""
    metric, cost = _stack(points, cost_model)
    affordable = cost <= budget
    best = np.where(affordable, metric, -np.inf).max(axis=0)
    candidates = affordable & (metric == best)
    choice = np.where(candidates, cost, np.inf).argmin(axis=0)
    return np.where(np.isfinite(best) & (best > 0), choice, -1)


def query_optimum(points: Sequence[ConfigPoints], budget: float, cost_model: str) -> np.ndarray:
    """float[Q]: per query, the best metric over the configurations (of one model) with cost <= budget, 0 if none."""
    metric, cost = _stack(points, cost_model)
    return np.where(cost <= budget, metric, 0.0).max(axis=0)


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
    metric, cost = _stack(points, cost_model)
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


# ------------------------------------------------------------------------------------------------ frontier
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
    by_model = _by_model(points)
    raw = np.stack([budget_curve(pts, cost_model)(grid) for pts in by_model.values()])
    return Frontier(cost_model=cost_model, grid=grid, models=tuple(by_model),
                    params=tuple(pts[0].params for pts in by_model.values()), raw=raw, smoothed=smooth3(raw))


def policy_frontiers(points: Sequence[ConfigPoints], cost_model: str, grid: ArrayLike) -> dict[str, Frontier]:
    """The frontier of each attention policy's configurations alone ("dense" first, then the sparse labels)."""
    labels = sorted({p.policy for p in points}, key=lambda label: (label != "dense", label))
    return {label: pareto_frontier([p for p in points if p.policy == label], cost_model, grid) for label in labels}


# ------------------------------------------------------------------------------------------------ costlier ratio
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
    by_model = _by_model(points)
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


# ------------------------------------------------------------------------------------------------ iso-cost grid
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
    by_model = _by_model(points)
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


# ------------------------------------------------------------------------------------------------ analysis
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
