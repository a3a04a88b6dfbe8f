"""Scaling-law analysis of evaluation results: frontiers under FLOPs and eFLOPs, the optimal model per budget, the
costlier ratio of FLOPs-guided choices, iso-cost grids, dense vs sparse, and fitted laws (docs/evaluation.md).

    python scripts/scaling_analysis.py --results=runs/aime24-*.jsonl --out_dir=runs/scaling --hardware=B200
    python scripts/scaling_analysis.py --results=a.jsonl,b.jsonl --strategy=long_cot --policy=all

--results: results jsonl files (one record per problem and sample; repeat the flag or separate with commas).
--kinetics_traces=qwen3-1.7b:path/to/traces.jsonl (repeatable) adds released Kinetics traces (docs/evaluation.md):
the model is a preset name, --trace_tokenizer counts their tokens (a Qwen3 tokenizer directory), and they are
analyzed as Best-of-N runs of --trace_dataset.
Every (dataset, strategy) found is analyzed into --out_dir/<dataset>/<strategy>/ (the files are listed in
kinetics_jax/scaling/plots.py). The main frontier uses the runs of attention policy --policy ("dense", a sparse
label such as "block_topk-256", or "all"); every policy gets its own frontier in policies.png. The summary table
prints, per cost model, where each model is optimal on the frontier, the costlier ratio, and the fits.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re

from absl import flags, logging
from tqdm import tqdm

import jax

import kinetics_jax as kj
from kinetics_jax import cli, cost, outputs, scaling
from kinetics_jax.eval import datasets, results

_RESULTS = flags.DEFINE_multi_string("results", None, "Results jsonl file(s); comma-separated lists are split.")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/scaling", "Output directory.")
_HARDWARE = flags.DEFINE_enum("hardware", "B200", sorted(cost.HARDWARE), "Hardware to price eFLOPs on.")
_GRID_POINTS = flags.DEFINE_integer("grid_points", 64, "Budgets on each log-spaced cost grid.", lower_bound=6)
_STRATEGY = flags.DEFINE_enum("strategy", "both", ["best_of_n", "long_cot", "both"], "Strategies to analyze.")
_POLICY = flags.DEFINE_string("policy", "dense", "Attention policy label of the main frontier, or 'all'.")
_LEVELS = flags.DEFINE_integer("levels", 50, "Accuracy levels of the costlier ratio.", lower_bound=1)
_TRACES = flags.DEFINE_multi_string("kinetics_traces", None, "preset:path of a released Kinetics trace file.")
_TRACE_TOKENIZER = flags.DEFINE_string("trace_tokenizer", None, "Tokenizer directory to count trace tokens.")
_TRACE_DATASET = flags.DEFINE_string("trace_dataset", "aime24", "Dataset name of the Kinetics traces.")
_TRACE_MAX_NEW = flags.DEFINE_integer("trace_max_new_tokens", 32768, "Generation limit of the traces.",
                                      lower_bound=1)


def _trace_records() -> list[dict]:
    """Records of the --kinetics_traces files."""
    if not _TRACES.value:
        return []
    if not _TRACE_TOKENIZER.value:
        raise ValueError("--kinetics_traces needs --trace_tokenizer (the traces store text, costs need tokens)")
    tokenizer = kj.Tokenizer.from_dir(_TRACE_TOKENIZER.value)
    records = []
    for spec in _TRACES.value:
        model, sep, path = spec.partition(":")
        if not sep or model not in kj.Qwen3Config.preset_names():
            raise ValueError(f"--kinetics_traces {spec!r}: expected <preset>:<path> with a preset among "
                             f"{', '.join(kj.Qwen3Config.preset_names())}")
        records += results.read_kinetics_traces(
            path, model=model, model_config=kj.Qwen3Config.preset(model).to_hf_dict(),
            dataset=_TRACE_DATASET.value, count_tokens=lambda text: len(tokenizer.encode(text)),
            prompt_tokens=lambda query: len(tokenizer.apply_chat_template(
                [{"role": "user", "content": datasets.kinetics_prompt(query)}], enable_thinking=True)),
            max_new_tokens=_TRACE_MAX_NEW.value)
    return records


def _paths() -> list[str]:
    paths = [p for value in _RESULTS.value or [] for p in value.split(",") if p]
    if not paths and not _TRACES.value:
        raise ValueError("give --results and / or --kinetics_traces")
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise ValueError(f"--results file(s) not found: {', '.join(missing)}")
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _print_summary(a: scaling.Analysis, out_dir: str) -> None:
    print(f"\n== {a.dataset} / {a.strategy}: policy {a.policy}, {len(a.frontiers['flops'].models)} models, "
          f"{a.num_configurations} configurations, {a.num_queries} queries, priced on {a.hardware} -> {out_dir}")
    print("optimal model per budget (cross-model frontier, 3-point smoothed)")
    print(f"{'cost model':<10} | {'optimal model':<20} | {'from budget':>11} | {'to budget':>11} | accuracy")
    for cm, f in a.frontiers.items():
        for model, lo, hi, acc_lo, acc_hi in f.segments():
            print(f"{cm:<10} | {model:<20} | {lo:>11.3e} | {hi:>11.3e} | {acc_lo:.3f}-{acc_hi:.3f}")
    r = a.ratio
    if r.levels.size:
        i = r.argmax
        print(f"costlier ratio: FLOPs-guided choices need {r.max:.2f}x (max) / {r.median:.2f}x (median) the "
              f"eFLOPs-optimal eFLOPs over {r.levels.size} accuracy levels; max at accuracy {r.levels[i]:.3f} "
              f"({r.flops_model[i]} by FLOPs, {r.eflops_model[i]} by eFLOPs)")
    else:
        print("costlier ratio: undefined (no configuration is ever correct)")
    print("fits: acc = a * sigmoid((log10 cost - b) / s)")
    print(f"{'cost model':<10} | {'model':<20} | {'a':>6} | {'b':>7} | {'s':>6} | {'R^2':>6} | {'RMSE':>6}")
    for cm, by_model in a.fits.items():
        for model, fit in by_model.items():
            print(f"{cm:<10} | {model:<20} | {fit.a:>6.3f} | {fit.b:>7.3f} | {fit.s:>6.3f} | {fit.r2:>6.3f} | "
                  f"{fit.rmse:>6.3f}")


def main(argv: list[str]) -> None:
    del argv
    logging.info("process %d of %d, backend %s", jax.process_index(), jax.process_count(), jax.default_backend())
    strategies = scaling.STRATEGIES if _STRATEGY.value == "both" else (_STRATEGY.value,)
    paths = _paths()
    writer = jax.process_index() == 0
    # --out_dir is checked and locked before the records are read: a second analysis into it is refused.
    with outputs.exclusive(_OUT_DIR.value, directory=True) if writer else contextlib.nullcontext():
        runs = scaling.group_runs((results.read_records(paths) if paths else []) + _trace_records())
        points: dict[tuple[str, str], list[scaling.ConfigPoints]] = collections.defaultdict(list)
        for run in tqdm([r for r in runs if r.strategy in strategies], desc="pricing runs", unit="run"):
            points[(run.dataset, run.strategy)].extend(scaling.run_points(run, _HARDWARE.value))
        if not points:
            raise ValueError(f"no run of strategy {' or '.join(strategies)} in --results "
                             f"(found {sorted({r.strategy for r in runs})})")
        for (dataset, strategy), pts in sorted(points.items()):
            analysis = scaling.analyze(pts, grid_points=_GRID_POINTS.value, policy=_POLICY.value,
                                       levels=_LEVELS.value)
            out_dir = os.path.join(_OUT_DIR.value, _safe(dataset), strategy)
            if writer:
                written = scaling.write_report(analysis, out_dir)
                logging.info("wrote %d files to %s", len(written), out_dir)
                _print_summary(analysis, out_dir)


if __name__ == "__main__":
    cli.run(main)
