"""Configurations of a model: what a run contributes to the analysis, with a metric and a cost per query.

Input: runs of evaluation records (`runs.py`: the records sharing (model, dataset, config)); a run contributes
several *configurations* of its model (`ConfigPoints`), each with a metric and a cost per query (problem):

- Best-of-N (config.strategy "best_of_n"): with n_q samples of query q and c_q of them correct, every
  k in {1, 2, 4, ...} up to the fewest samples of any query of the run is a configuration (`samples` = k):
      metric_q = pass@k = 1 - C(n_q - c_q, k) / C(n_q, k)       (unbiased; `kinetics_jax.eval.metrics.pass_at_k`)
      cost_q   = mean over q's samples i of cost(Li_q, L_i, N = k)
  where cost(Li, L, N) is `tts_cost` of N samples that all generate L tokens after a prompt of Li tokens
  (`pricing.py`; the paper's accounting: the k trials are priced at each real sample length in turn).
- Long-CoT (config.strategy "long_cot"): every truncation budget B < max_new_tokens of the run (`Run`), and
  B = max_new_tokens itself, is a configuration (`budget` = B):
      metric_q = mean over samples of their correctness cut at B tokens (`correct` for B = max_new_tokens; for
                 other budgets the truncation rule of kinetics_jax.eval.records: `correct` for a sample that
                 stopped by itself within B tokens, else its record's truncation entry for B)
      cost_q   = mean over samples of cost(Li_q, min(L_i, B), N = 1)
Costs are decoding costs per query (FLOPs / eFLOPs per query on one hardware; `COST_MODELS`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from typing import Sequence

import numpy as np

from kinetics_jax.cost.analytic import resolve_hardware
from kinetics_jax.cost.analytic import paper_params
from kinetics_jax.eval.metrics import pass_at_k
from kinetics_jax.eval.records import correct_within
from kinetics_jax.scaling.pricing import cost_of_samples
from kinetics_jax.scaling.runs import Run, Sample

log = logging.getLogger(__name__)

COST_MODELS = ("flops", "eflops")


@dataclasses.dataclass(frozen=True, eq=False)
class ConfigPoints:
    """One configuration of a model: metric and costs on each query.

    strategy "best_of_n" has `samples` (k trials), "long_cot" has `budget` (B tokens), the other one is None;
    `label` shows it ("k=4", "B=8192"). gen_tokens: tokens generated per query at most (k x max_new_tokens, or
    B); metric, flops, eflops: float[Q] over `queries` (costs per query, in FLOPs and eFLOPs on `hardware`).
    """

    model: str
    params: int
    dataset: str
    strategy: str
    policy: str
    gen_tokens: int
    hardware: str
    queries: tuple[str, ...]
    metric: np.ndarray
    flops: np.ndarray
    eflops: np.ndarray
    samples: int | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        given = "samples" if self.strategy == "best_of_n" else "budget"
        other = "budget" if given == "samples" else "samples"
        if not isinstance(getattr(self, given), (int, np.integer)) or getattr(self, other) is not None:
            raise ValueError(f"a {self.strategy} configuration has an integer {given} and no {other}; got "
                             f"samples={self.samples!r}, budget={self.budget!r}")

    @property
    def label(self) -> str:
        """"k=<samples>" (Best-of-N trials) or "B=<budget>" (long-CoT budget)."""
        return f"k={self.samples}" if self.budget is None else f"B={self.budget}"

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


def _points(run: Run, gen_tokens: int, hardware: str, metric: list[float], costs: list[np.ndarray], *,
            samples: int | None = None, budget: int | None = None) -> ConfigPoints:
    costs_arr = np.asarray(costs, np.float64).reshape(len(costs), 2)
    return ConfigPoints(model=run.model, params=paper_params(run.config), dataset=run.dataset, strategy=run.strategy,
                        policy=run.policy, gen_tokens=gen_tokens, hardware=resolve_hardware(hardware).name,
                        queries=tuple(run.problems), metric=np.asarray(metric, np.float64), flops=costs_arr[:, 0],
                        eflops=costs_arr[:, 1], samples=samples, budget=budget)


def best_of_n_points(run: Run, hardware: str = "B200") -> list[ConfigPoints]:
    """One configuration per k in {1, 2, 4, ...} <= the fewest samples of any query (see the module doc)."""
    n_min = min(len(samples) for samples in run.problems.values())
    ks = [2 ** i for i in range(int(math.log2(n_min)) + 1)]
    points = []
    for k in ks:
        metric, costs = [], []
        for samples in run.problems.values():
            metric.append(pass_at_k(len(samples), sum(s.correct for s in samples), k))
            costs.append(np.mean([cost_of_samples(run, s, k, hardware, s.length) for s in samples], axis=0))
        points.append(_points(run, k * run.max_new_tokens, hardware, metric, costs, samples=k))
    return points


def sample_correct_within(run: Run, problem_id: str, sample: Sample, budget: int) -> bool:
    """Is a sample of the run correct when cut at `budget` tokens (kinetics_jax.eval.records.correct_within)?
    ValueError, naming the run and problem, when its record does not say."""
    correct = correct_within(budget, length=sample.length, correct=sample.correct, truncation=sample.truncation)
    if correct is None:
        raise ValueError(f"{run.describe()}: problem {problem_id!r} has a sample of {sample.length} tokens without "
                         f"a truncation entry for budget {budget}")
    return correct


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
                metric.append(np.mean([sample_correct_within(run, problem_id, s, budget) for s in samples]))
            costs.append(np.mean([cost_of_samples(run, s, 1, hardware, min(s.length, budget)) for s in samples],
                                 axis=0))
        points.append(_points(run, budget, hardware, metric, costs, budget=budget))
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


def group_by_model(points: Sequence[ConfigPoints]) -> dict[str, list[ConfigPoints]]:
    """Configurations per model, models ordered by paper_params (then name)."""
    groups: dict[str, list[ConfigPoints]] = collections.defaultdict(list)
    for p in points:
        groups[p.model].append(p)
    return {m: groups[m] for m in sorted(groups, key=lambda m: (groups[m][0].params, m))}


def stacked(points: Sequence[ConfigPoints], cost_model: str) -> tuple[np.ndarray, np.ndarray]:
    """(metric, cost), each float[C, Q], of configurations over the same queries."""
    if len({p.queries for p in points}) != 1:
        raise ValueError("configurations must share their queries (use align_queries)")
    return np.stack([p.metric for p in points]), np.stack([p.cost(cost_model) for p in points])
