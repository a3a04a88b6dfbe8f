"""The study's own outputs beside the scaling reports: the summary table (Markdown, CSV, JSON) and one overview
figure.

    study.png    Best-of-N accuracy (pass@k) against FLOPs and eFLOPs per problem, one line per (model, policy);
                 the long-CoT truncation curve (accuracy against the token budget) of each model and policy; the
                 cross-model eFLOPs frontier of each attention policy (dense against block top-k)
    summary.md   the table, per model and policy: parameters, pass@k, majority vote, mean generated tokens,
                 accuracy at the truncation budgets, FLOPs and eFLOPs per problem (all N samples), and where each
                 model is optimal on the frontiers
    summary.csv  the same table, one row per (model, policy)
    summary.json the rows as JSON (with FLOPs and eFLOPs per problem of all N samples)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

from matplotlib.figure import Figure

from kinetics_jax import scaling
from kinetics_jax.policies import Dense
from kinetics_jax.scaling.plots import COST_NAMES, PALETTE, cost_axis, save_figure, write_csv, write_json, write_text
from kinetics_jax.study.summary import Row

_STYLES = ("-", "--", ":", "-.")
DENSE = Dense().label()  # the baseline, drawn in black


def _styles(rows: Sequence[Row]) -> tuple[dict[str, str], dict[str, str]]:
    models = list(dict.fromkeys(r.model for r in rows))
    policies = list(dict.fromkeys(r.policy for r in rows))
    return ({m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)},
            {p: _STYLES[i % len(_STYLES)] for i, p in enumerate(policies)})


def plot_overview(rows: Sequence[Row], analyses: Mapping[str, scaling.Analysis], path: str, *, hardware: str,
                  title: str) -> str:
    """study.png (see the module doc)."""
    colors, styles = _styles(rows)
    fig = Figure(layout="constrained", figsize=(16, 9))
    axes = fig.subplots(2, 2)
    for ax, cost_model in zip(axes[0], ("flops", "eflops")):
        for r in rows:
            ks = sorted(r.pass_at)
            x = [r.cost_at[k][cost_model] for k in ks]
            ax.plot(x, [r.pass_at[k] for k in ks], marker="o", ms=3, color=colors[r.model], ls=styles[r.policy],
                    label=f"{r.model} {r.policy}")
        cost_axis(ax, cost_model, hardware)
        ax.set(ylabel="pass@k", ylim=(-0.02, 1.02),
               title=f"Best-of-N: pass@k, k = 1, 2, 4, ... against {COST_NAMES[cost_model]}")
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax = axes[1][0]
    for r in rows:
        budgets = sorted(r.truncation)
        ax.plot(budgets, [r.truncation[b] for b in budgets], marker=".", color=colors[r.model], ls=styles[r.policy],
                label=f"{r.model} {r.policy}")
    ax.set(xlabel="generation budget (tokens): the chain cut there", ylabel="accuracy", ylim=(-0.02, 1.02),
           title="Long CoT: truncation curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax = axes[1][1]
    if "best_of_n" in analyses:
        by_policy = analyses["best_of_n"].policies["eflops"]
        for i, (label, frontier) in enumerate(sorted(by_policy.items(), key=lambda kv: kv[0] != DENSE)):
            dense = label == DENSE
            ax.plot(frontier.grid, frontier.accuracy, color="black" if dense else PALETTE[i],
                    ls="-" if dense else "--", lw=1.6, label=label)
        ax.legend(fontsize=8, loc="lower right")
    cost_axis(ax, "eflops", hardware)
    ax.set(ylabel="frontier accuracy", ylim=(-0.02, 1.02),
           title="Best-of-N: cross-model eFLOPs frontier per attention policy")
    fig.suptitle(title)
    return save_figure(fig, path)


def _optimal(analyses: Mapping[str, scaling.Analysis]) -> list[str]:
    """Lines "strategy, cost model: model (budgets a to b), ..." of the dense frontiers."""
    lines = []
    for strategy, a in analyses.items():
        for cost_model, frontier in a.frontiers.items():
            parts = [f"{m} ({lo:.3g} to {hi:.3g}, accuracy {a0:.2f} to {a1:.2f})"
                     for m, lo, hi, a0, a1 in frontier.segments()]
            lines.append(f"- {strategy}, {cost_model}: " + ("; ".join(parts) or "no model is ever correct"))
    return lines


def table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """The summary table: header and rows of strings."""
    ks = sorted({k for r in rows for k in r.pass_at})
    budgets = sorted({b for r in rows for b in r.truncation})
    header = (["model", "params", "policy"] + [f"pass@{k}" for k in ks] + ["maj@N", "gen tokens"]
              + [f"acc@{b}" for b in budgets] + ["FLOPs/problem", "eFLOPs/problem"])
    body = [[r.model, f"{r.params / 1e6:.2f}M", r.policy] + [f"{r.pass_at.get(k, float('nan')):.3f}" for k in ks]
            + [f"{r.majority:.3f}", f"{r.mean_length:.1f}"]
            + [f"{r.truncation.get(b, float('nan')):.3f}" for b in budgets]
            + [f"{r.flops:.3e}", f"{r.eflops:.3e}"] for r in rows]
    return header, body


def markdown(rows: Sequence[Row], analyses: Mapping[str, scaling.Analysis], intro: str) -> str:
    """summary.md: an intro line, the table, and the optimal model per budget on the dense frontiers."""
    header, body = table(rows)
    lines = [intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", "Optimal model per budget on the dense cross-model frontiers (3-point smoothed):", ""]
    lines += _optimal(analyses)
    for strategy, a in analyses.items():
        r = a.ratio
        if r.levels.size:
            lines.append(f"- {strategy}: FLOPs-guided model choices cost {r.max:.2f}x (max) / {r.median:.2f}x "
                         f"(median) the eFLOPs of the eFLOPs-optimal ones")
    return "\n".join(lines) + "\n"


def write(rows: Sequence[Row], analyses: Mapping[str, scaling.Analysis], out_dir: str, *, hardware: str,
          intro: str) -> list[str]:
    """study.png, summary.md, summary.csv and summary.json into out_dir; returns their paths."""
    header, body = table(rows)
    paths = [plot_overview(rows, analyses, os.path.join(out_dir, "study.png"), hardware=hardware, title=intro),
             write_csv(os.path.join(out_dir, "summary.csv"), header, body),
             write_json(os.path.join(out_dir, "summary.json"),
                        [{**dataclasses.asdict(r), "flops": r.flops, "eflops": r.eflops} for r in rows])]
    return paths + [write_text(os.path.join(out_dir, "summary.md"), markdown(rows, analyses, intro))]
