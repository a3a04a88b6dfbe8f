"""kinetics_jax.scaling.plots: every figure renders with its curves drawn, and the tables hold the analysis."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from matplotlib import image

from kinetics_jax import Qwen3Config
from kinetics_jax.scaling import analyze, group_runs, plots, run_points
from kinetics_jax.policies import AttentionConfig, BlockTopK

MODELS = {"qwen3-0.6b": 0.25, "qwen3-1.7b": 0.5, "qwen3-8b": 0.8}  # chance of a right answer on an easy problem
BUDGETS = (1024, 2048, 4096)
MAX_NEW_TOKENS = 8192
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")  # the first three of plots.PALETTE: one per model, by size


def synthetic_records(problems: int = 6, samples: int = 4, seed: int = 0) -> list[dict]:
    """Long-CoT traces of three Qwen3 sizes, dense and (for the smallest) block top-k 256: bigger models are right
    more often and stop sooner; a trace is right at a budget if it is right and ended within it."""
    rng = np.random.default_rng(seed)
    records = []
    policies = {"dense": AttentionConfig(), "sparse": AttentionConfig(BlockTopK(block_topk=16))}
    for name, skill in MODELS.items():
        config = Qwen3Config.preset(name)
        for policy, attention in policies.items():
            if policy == "sparse" and name != "qwen3-0.6b":
                continue
            for q in range(problems):
                p_right = skill * (1 - q / (2 * problems))
                for s in range(samples):
                    length = int(min(MAX_NEW_TOKENS, rng.integers(600, 3000) / skill ** 0.5))
                    right = bool(rng.random() < p_right)
                    records.append({
                        "model": name, "model_config": config.to_hf_dict(), "dataset": "synthetic",
                        "problem_id": f"p{q}", "sample_index": s, "num_samples": samples, "prompt_length": 120,
                        "length": length, "finish_reason": "stop", "correct": right, "answer": None, "gold": "1",
                        "truncation": {str(b): right and length <= b for b in BUDGETS},
                        "config": {"strategy": "long_cot", "max_new_tokens": MAX_NEW_TOKENS,
                                   "attention": attention.to_fields(),
                                   "sampling": {"temperature": 0.6}, "seed": 0, "checkpoint": name}})
    return records


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    points = [p for run in group_runs(synthetic_records()) for p in run_points(run, "B200")]
    analysis = analyze(points, grid_points=48)
    out = tmp_path_factory.mktemp("report")
    return analysis, out, plots.write_report(analysis, str(out))


def _near(img: np.ndarray, color: str, tol: float = 0.1) -> int:
    """Pixels within tol of a '#rrggbb' colour in every channel."""
    rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int(np.all(np.abs(img[..., :3] - rgb) < tol, axis=-1).sum())


def _colourful(img: np.ndarray) -> float:
    """Fraction of pixels that are neither white nor grey (channel spread > 0.15)."""
    rgb = img[..., :3]
    return float(((rgb.max(-1) - rgb.min(-1)) > 0.15).mean())


def test_every_file_is_written(report):
    _, out, paths = report
    names = sorted(os.path.basename(p) for p in paths)
    assert names == sorted(["frontier.png", "optimal_model.png", "isocost.png", "policies.png", "fits.png",
                            "frontier.csv", "optimal_model.csv", "policies.csv", "isocost.csv", "ratio.csv",
                            "fits.csv", "summary.json"])
    assert sorted(os.listdir(out)) == names  # no temporary files left behind
    for path in paths:
        if path.endswith(".png"):
            assert os.path.getsize(path) > 10_000, path


@pytest.mark.parametrize("name", ["frontier.png", "fits.png"])
def test_each_models_curve_is_drawn(report, name):
    _, out, _ = report
    img = image.imread(os.path.join(out, name))
    assert img.shape[0] > 300 and img.shape[1] > 600
    for color in COLORS:
        assert _near(img, color) > 150, (name, color)
    assert _near(img, "#000000", 0.15) > 300  # the frontier (dashed black) or the axes


def test_optimal_model_and_policies_are_drawn(report):
    _, out, _ = report
    assert _near(image.imread(os.path.join(out, "optimal_model.png")), COLORS[0]) > 300
    policies = image.imread(os.path.join(out, "policies.png"))
    assert _near(policies, "#000000", 0.15) > 300 and _near(policies, COLORS[1]) > 150  # dense, block_topk-256


def test_isocost_image_has_colour_and_iso_lines(report):
    _, out, _ = report
    img = image.imread(os.path.join(out, "isocost.png"))
    assert _colourful(img) > 0.3
    white = np.all(img[..., :3] > 0.97, axis=-1)
    inner = white[img.shape[0] // 5: -img.shape[0] // 5, img.shape[1] // 8: img.shape[1] // 2]
    assert 0.002 < inner.mean() < 0.5  # white contour lines cross the coloured image


def test_tables_hold_the_analysis(report):
    analysis, out, _ = report
    with open(os.path.join(out, "optimal_model.csv")) as f:
        rows = list(csv.DictReader(f))
    flops = analysis.frontiers["flops"]
    assert len(rows) == 2 * flops.grid.size
    assert [r["optimal_model"] or None for r in rows[:flops.grid.size]] == list(flops.optimal)
    assert float(rows[-1]["accuracy"]) == pytest.approx(analysis.frontiers["eflops"].accuracy[-1])
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["costlier_ratio"]["max"] == pytest.approx(analysis.ratio.max)
    assert summary["costlier_ratio"]["max"] >= 1.0
    assert set(summary["fits"]["eflops"]) == set(MODELS)
    assert summary["isocost"]["gen_tokens"] == [*BUDGETS, MAX_NEW_TOKENS]
    assert list(summary["policies"]["eflops"]) == ["dense", "block_topk-256"]
    with open(os.path.join(out, "fits.csv")) as f:
        assert len(list(csv.DictReader(f))) == 2 * len(MODELS)
