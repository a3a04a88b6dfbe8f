"""The study's summary: one table row per (model, policy) of its Best-of-N records (`summary_rows`), and the scaling
analysis of each strategy (`analyze`: kinetics_jax.scaling's frontiers under FLOPs and eFLOPs, the optimal model
per budget, dense vs sparse).

    records = results.read_records(paths)
    analyses = study.analyze(records, "B200", out_dir)
    rows = study.summary_rows(records, "B200")
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from kinetics_jax import scaling
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.scaling.points import sample_correct_within


@dataclasses.dataclass(frozen=True)
class Row:
    """One (model, policy) of the summary table, means over the problems: pass@k (k = 1, 2, 4, ... N), majority
    vote of the N answers, generated tokens per sample, truncation[b]: accuracy of a sample cut at b tokens (b =
    max_new_tokens: uncut), and cost_at[k]: {"flops", "eflops"} per problem of k samples (eFLOPs on the study's
    hardware)."""

    model: str
    params: int
    policy: str
    pass_at: dict[int, float]
    majority: float
    mean_length: float
    truncation: dict[int, float]
    cost_at: dict[int, dict[str, float]]

    @property
    def flops(self) -> float:
        return self.cost_at[max(self.cost_at)]["flops"]

    @property
    def eflops(self) -> float:
        return self.cost_at[max(self.cost_at)]["eflops"]


def _majority(answers: Sequence[str | None], gold: str) -> float:
    """1 if the most frequent (non-missing) answer is the gold one (ties share the credit), else 0."""
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    winners = [a for a, c in counts.items() if c == top]
    return winners.count(gold) / len(winners)


def summary_rows(records: Sequence[dict[str, Any]], hardware: str) -> list[Row]:
    """The summary table of a study's records (its Best-of-N runs), ordered by model size then policy."""
    best_of_n = [r for r in records if r["config"]["strategy"] == "best_of_n"]
    answers: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))  # (model, policy) -> problem -> its records
    for r in best_of_n:
        label = AttentionConfig.from_fields(r["config"]["attention"]).policy.label()
        answers[(r["model"], label)][r["problem_id"]].append(r)
    budgets = sorted({int(b) for r in records for b in r["config"]["truncation_budgets"]})
    rows = []
    for run in scaling.group_runs(best_of_n):
        points = scaling.best_of_n_points(run, hardware)
        samples = [s for ss in run.problems.values() for s in ss]
        truncation = {b: float(np.mean([sample_correct_within(run, problem_id, s, b)
                                        for problem_id, ss in run.problems.items() for s in ss]))
                      for b in budgets if b < run.max_new_tokens}
        truncation[run.max_new_tokens] = float(np.mean([s.correct for s in samples]))  # the whole chain
        rows.append(Row(model=run.model, params=run.config.num_params(), policy=run.policy,
                        pass_at={p.samples: float(p.metric.mean()) for p in points},
                        majority=float(np.mean([_majority([r["answer"] for r in rs], rs[0]["gold"])
                                                for rs in answers[(run.model, run.policy)].values()])),
                        mean_length=float(np.mean([s.length for s in samples])), truncation=truncation,
                        cost_at={p.samples: {"flops": float(p.flops.mean()), "eflops": float(p.eflops.mean())}
                                 for p in points}))
    return sorted(rows, key=lambda r: (r.params, r.policy != "dense", r.policy))


def analyze(records: Sequence[dict[str, Any]], hardware: str, out_dir: str) -> dict[str, scaling.Analysis]:
    """The scaling analysis of each strategy (main frontier: dense; every policy gets its own frontier), its
    report written to <out_dir>/<strategy>/ (kinetics_jax/scaling/plots.py lists the files)."""
    analyses = {}
    for strategy in scaling.STRATEGIES:
        points = [p for run in scaling.group_runs([r for r in records if r["config"]["strategy"] == strategy])
                  for p in scaling.run_points(run, hardware)]
        if points:
            analyses[strategy] = scaling.analyze(points, policy="dense")
            scaling.write_report(analyses[strategy], os.path.join(out_dir, strategy))
    return analyses
