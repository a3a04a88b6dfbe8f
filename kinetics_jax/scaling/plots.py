"""Figures (PNG) and numbers (CSV, JSON) of an `Analysis`; every file is written atomically (temp file + rename).

Figures are built on `matplotlib.figure.Figure` and rendered by the Agg canvas: no pyplot, no display, no global
backend switch. Files written by `write_report` into one directory:

    frontier.png        model curves (smoothed) and the cross-model frontier, FLOPs and eFLOPs side by side
    optimal_model.png   the frontier's optimal model against the budget (step plot), FLOPs and eFLOPs
    isocost.png         accuracy on (model size x generation budget), with iso-eFLOPs contour lines
    policies.png        the cross-model frontier of each attention policy (dense against sparse)
    fits.png            each model's raw curve (points) and its fitted sigmoid law
    frontier.csv        cost_model, budget, model, accuracy_raw, accuracy_smoothed (model "frontier": the max)
    optimal_model.csv   cost_model, budget, accuracy, optimal_model
    policies.csv        cost_model, policy, budget, accuracy, optimal_model
    isocost.csv         model, params, gen_tokens, accuracy, flops, eflops
    ratio.csv           level, flops_model, flops_choice_eflops, eflops_model, optimal_eflops, ratio
    fits.csv            cost_model, model, a, b, s, r2, rmse, num_points
    summary.json        all of the above in one document (NaN written as null)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from kinetics_jax import outputs
from kinetics_jax.scaling.fit import SigmoidFit
from kinetics_jax.scaling.analysis import Analysis
from kinetics_jax.scaling.frontier import Frontier
from kinetics_jax.scaling.isocost import IsoCostGrid

_DPI = 100
COST_NAMES = {"flops": "FLOPs", "eflops": "eFLOPs"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


# ------------------------------------------------------------------------------------------------ atomic files
def _atomic_write(path: str, data: bytes) -> None:
    with outputs.replacing(path, "wb") as f:
        f.write(data)


def save_figure(fig: Figure, path: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    _atomic_write(path, buffer.getvalue())
    return path


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    _atomic_write(path, text.getvalue().encode())
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_text(path: str, text: str) -> str:
    _atomic_write(path, text.encode())
    return path


def write_json(path: str, value: Any) -> str:
    _atomic_write(path, (json.dumps(_jsonable(value), indent=1) + "\n").encode())
    return path


# ------------------------------------------------------------------------------------------------ figures
def _colors(models: Sequence[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}


def cost_axis(ax, cost_model: str, hardware: str) -> None:
    """A log budget axis, labelled with the cost model's unit; major ticks only (decades)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("FLOPs per query" if cost_model == "flops" else f"eFLOPs per query ({hardware})")
    ax.grid(alpha=0.3)


def plot_frontiers(frontiers: Mapping[str, Frontier], path: str, *, title: str, hardware: str) -> str:
    """Each model's smoothed curve and the frontier (black dashed), one panel per cost model."""
    fig = Figure(layout="constrained", figsize=(6 * len(frontiers), 4.5))
    for ax, (cm, f) in zip(fig.subplots(1, len(frontiers), squeeze=False)[0], frontiers.items()):
        colors = _colors(f.models)
        for i, model in enumerate(f.models):
            ax.plot(f.grid, f.smoothed[i], color=colors[model], lw=1.6, label=model)
        ax.plot(f.grid, f.accuracy, color="black", ls="--", lw=1.2, label="frontier")
        cost_axis(ax, cm, hardware)
        ax.set(ylabel="accuracy", ylim=(-0.02, 1.02), title=COST_NAMES[cm])
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_optimal_model(frontiers: Mapping[str, Frontier], path: str, *, title: str, hardware: str) -> str:
    """The optimal model of the frontier against the budget (a step plot; gaps where nothing is affordable)."""
    fig = Figure(layout="constrained", figsize=(6 * len(frontiers), 3.5))
    for ax, (cm, f) in zip(fig.subplots(1, len(frontiers), squeeze=False)[0], frontiers.items()):
        index = {m: i for i, m in enumerate(f.models)}
        y = np.array([np.nan if m is None else index[m] for m in f.optimal])
        ax.step(f.grid, y, where="post", color=PALETTE[0], lw=2)
        cost_axis(ax, cm, hardware)
        ax.set(yticks=range(len(f.models)), yticklabels=f.models, ylim=(-0.5, len(f.models) - 0.5),
               title=f"optimal model ({COST_NAMES[cm]})")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_isocost(grid: IsoCostGrid, path: str, *, title: str, hardware: str) -> str:
    """Accuracy as an image over (model, generation budget), with contour lines of equal log10 eFLOPs."""
    columns, rows = len(grid.gen_tokens), len(grid.models)
    fig = Figure(layout="constrained", figsize=(min(3 + 0.8 * columns, 12), 2.5 + 0.6 * rows))
    ax = fig.subplots()
    image = ax.imshow(grid.accuracy, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="accuracy")
    log_cost = np.ma.masked_invalid(np.log10(grid.eflops))
    if min(rows, columns) >= 2 and log_cost.count() >= 4 and np.ptp(log_cost.compressed()) > 0:
        lines = ax.contour(log_cost, levels=6, colors="white", linewidths=1.2)
        ax.clabel(lines, fmt=lambda v: f"1e{v:.1f}", fontsize=7)
    ax.set_xticks(range(columns), [str(t) for t in grid.gen_tokens], rotation=45 if columns > 8 else 0)
    ax.set_yticks(range(rows), [f"{m} ({p / 1e9:.2g}B)" for m, p in zip(grid.models, grid.params)])
    ax.set(xlabel="generation budget per query (tokens)", ylabel="model",
           title=f"{title}\naccuracy; white lines: equal log10 eFLOPs per query ({hardware})")
    return save_figure(fig, path)


def plot_policies(policies: Mapping[str, Mapping[str, Frontier]], path: str, *, title: str, hardware: str) -> str:
    """The cross-model frontier of each attention policy (dense in black), one panel per cost model."""
    fig = Figure(layout="constrained", figsize=(6 * len(policies), 4.5))
    for ax, (cm, by_policy) in zip(fig.subplots(1, len(policies), squeeze=False)[0], policies.items()):
        sparse = [label for label in by_policy if label != "dense"]
        colors = {"dense": "black", **{label: PALETTE[(i + 1) % len(PALETTE)] for i, label in enumerate(sparse)}}
        for label, f in by_policy.items():
            ax.plot(f.grid, f.accuracy, color=colors[label], lw=1.8, label=label)
        cost_axis(ax, cm, hardware)
        ax.set(ylabel="frontier accuracy", ylim=(-0.02, 1.02), title=f"dense vs sparse ({COST_NAMES[cm]})")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_fits(frontiers: Mapping[str, Frontier], fits: Mapping[str, Mapping[str, SigmoidFit]], path: str, *,
              title: str, hardware: str) -> str:
    """Each model's raw curve (points) and its fitted law (line), one panel per cost model."""
    fig = Figure(layout="constrained", figsize=(6 * len(frontiers), 4.5))
    for ax, (cm, f) in zip(fig.subplots(1, len(frontiers), squeeze=False)[0], frontiers.items()):
        colors = _colors(f.models)
        dense = np.geomspace(f.grid[0], f.grid[-1], 200)
        for i, model in enumerate(f.models):
            law = fits[cm][model]
            ax.scatter(f.grid, f.raw[i], s=9, color=colors[model], alpha=0.6)
            ax.plot(dense, law.predict(dense), color=colors[model], lw=1.5,
                    label=f"{model}: a={law.a:.2f} b={law.b:.2f} s={law.s:.2f} R²={law.r2:.3f}")
        cost_axis(ax, cm, hardware)
        ax.set(ylabel="accuracy", ylim=(-0.02, 1.02), title=f"acc = a·sigmoid((log10 c − b) / s) ({COST_NAMES[cm]})")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ the report
def summary(analysis: Analysis) -> dict[str, Any]:
    """The analysis as one JSON-ready dict."""
    r = analysis.ratio
    at = r.argmax if r.levels.size else None
    return {
        "dataset": analysis.dataset, "strategy": analysis.strategy, "hardware": analysis.hardware,
        "policy": analysis.policy, "num_queries": analysis.num_queries,
        "num_configurations": analysis.num_configurations,
        "costlier_ratio": {
            "max": r.max, "median": r.median,
            "at_max": None if at is None else {"level": r.levels[at], "flops_model": r.flops_model[at],
                                               "eflops_model": r.eflops_model[at]},
            "levels": r.levels, "flops_model": r.flops_model, "flops_choice_eflops": r.flops_choice_eflops,
            "eflops_model": r.eflops_model, "optimal_eflops": r.optimal_eflops, "ratio": r.ratio},
        "optimal_model": {cm: [{"model": m, "from": lo, "to": hi, "accuracy_from": a0, "accuracy_to": a1}
                               for m, lo, hi, a0, a1 in f.segments()] for cm, f in analysis.frontiers.items()},
        "frontiers": {cm: {"grid": f.grid, "models": f.models, "params": f.params, "raw": f.raw,
                           "smoothed": f.smoothed, "accuracy": f.accuracy, "optimal": f.optimal}
                      for cm, f in analysis.frontiers.items()},
        "policies": {cm: {label: {"accuracy": f.accuracy, "optimal": f.optimal} for label, f in by_policy.items()}
                     for cm, by_policy in analysis.policies.items()},
        "isocost": {"models": analysis.isocost.models, "params": analysis.isocost.params,
                    "gen_tokens": analysis.isocost.gen_tokens, "accuracy": analysis.isocost.accuracy,
                    "flops": analysis.isocost.flops, "eflops": analysis.isocost.eflops},
        "fits": {cm: {m: vars(fit) for m, fit in by_model.items()} for cm, by_model in analysis.fits.items()},
    }


def write_report(analysis: Analysis, out_dir: str) -> list[str]:
    """Writes the figures and tables listed in the module doc into out_dir; returns their paths."""
    a = analysis
    title = f"{a.dataset} · {a.strategy} · {a.policy} · {a.num_queries} queries"
    kw = dict(title=title, hardware=a.hardware)

    def join(name: str) -> str:
        return os.path.join(out_dir, name)

    paths = [plot_frontiers(a.frontiers, join("frontier.png"), **kw),
             plot_optimal_model(a.frontiers, join("optimal_model.png"), **kw),
             plot_isocost(a.isocost, join("isocost.png"), **kw),
             plot_policies(a.policies, join("policies.png"), **kw),
             plot_fits(a.frontiers, a.fits, join("fits.png"), **kw)]
    paths.append(write_csv(join("frontier.csv"), ["cost_model", "budget", "model", "accuracy_raw",
                                                  "accuracy_smoothed"],
                           [(cm, f.grid[g], m, f.raw[i, g], f.smoothed[i, g])
                            for cm, f in a.frontiers.items() for i, m in enumerate(f.models)
                            for g in range(f.grid.size)]
                           + [(cm, f.grid[g], "frontier", "", f.accuracy[g])
                              for cm, f in a.frontiers.items() for g in range(f.grid.size)]))
    paths.append(write_csv(join("optimal_model.csv"), ["cost_model", "budget", "accuracy", "optimal_model"],
                           [(cm, b, acc, m or "") for cm, f in a.frontiers.items()
                            for b, acc, m in zip(f.grid, f.accuracy, f.optimal)]))
    paths.append(write_csv(join("policies.csv"), ["cost_model", "policy", "budget", "accuracy", "optimal_model"],
                           [(cm, label, b, acc, m or "") for cm, by_policy in a.policies.items()
                            for label, f in by_policy.items() for b, acc, m in zip(f.grid, f.accuracy, f.optimal)]))
    iso = a.isocost
    paths.append(write_csv(join("isocost.csv"), ["model", "params", "gen_tokens", "accuracy", "flops", "eflops"],
                           [(m, p, t, iso.accuracy[i, j], iso.flops[i, j], iso.eflops[i, j])
                            for i, (m, p) in enumerate(zip(iso.models, iso.params))
                            for j, t in enumerate(iso.gen_tokens) if np.isfinite(iso.accuracy[i, j])]))
    r = a.ratio
    paths.append(write_csv(join("ratio.csv"), ["level", "flops_model", "flops_choice_eflops", "eflops_model",
                                               "optimal_eflops", "ratio"],
                           zip(r.levels, r.flops_model, r.flops_choice_eflops, r.eflops_model, r.optimal_eflops,
                               r.ratio)))
    paths.append(write_csv(join("fits.csv"), ["cost_model", "model", "a", "b", "s", "r2", "rmse", "num_points"],
                           [(cm, m, fit.a, fit.b, fit.s, fit.r2, fit.rmse, fit.num_points)
                            for cm, by_model in a.fits.items() for m, fit in by_model.items()]))
    paths.append(write_json(join("summary.json"), summary(a)))
    return paths
