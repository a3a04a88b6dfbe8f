"""scripts/scaling_analysis.py end to end on a synthetic results file: the files, the printed summary, bad flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kinetics_jax import Qwen3Config
from kinetics_jax.policies import AttentionConfig, BlockTopK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("frontier.png", "optimal_model.png", "isocost.png", "policies.png", "fits.png", "frontier.csv",
         "optimal_model.csv", "policies.csv", "isocost.csv", "ratio.csv", "fits.csv", "summary.json")


def _records() -> list[dict]:
    """Qwen3-0.6B writes 8192-token traces, right on 3 of 4 problems; Qwen3-8B stops at 2048 and is always right.
    Long-CoT (dense, and block top-k 256 for the small model) and Best-of-N (4 samples) runs of both."""
    out = []
    sparse = AttentionConfig(BlockTopK(block_topk=16))
    runs = [("qwen3-0.6b", "long_cot", AttentionConfig(), 1), ("qwen3-0.6b", "long_cot", sparse, 1),
            ("qwen3-8b", "long_cot", AttentionConfig(), 1), ("qwen3-0.6b", "best_of_n", AttentionConfig(), 4),
            ("qwen3-8b", "best_of_n", AttentionConfig(), 4)]
    for name, strategy, attention, n in runs:
        small = name == "qwen3-0.6b"
        length = 8192 if small else 2048
        for q in range(4):
            for s in range(n):
                right = q < 3 or not small
                out.append({
                    "model": name, "model_config": Qwen3Config.preset(name).to_hf_dict(), "dataset": "synth/aime",
                    "problem_id": str(q), "sample_index": s, "num_samples": n, "prompt_length": 100,
                    "length": length, "finish_reason": "stop", "correct": right, "answer": "1", "gold": "1",
                    "truncation": {"2048": right and not small, "4096": right and not small},
                    "config": {"strategy": strategy, "max_new_tokens": 8192,
                               "attention": attention.to_fields(),
                               "sampling": {"temperature": 0.6}, "seed": 0, "checkpoint": name}})
    return out


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "scaling_analysis.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("results") / "synthetic.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    return str(path)


def test_writes_the_report_and_prints_the_summary(results, tmp_path):
    result = _run(f"--results={results}", f"--out_dir={tmp_path}", "--grid_points=24", "--hardware=B200")
    assert result.returncode == 0, result.stderr
    assert "process 0 of 1" in result.stderr
    for strategy in ("best_of_n", "long_cot"):
        out = tmp_path / "synth_aime" / strategy
        for name in FILES:
            assert (out / name).stat().st_size > 0, (strategy, name)
    out = result.stdout
    assert "== synth/aime / long_cot" in out and "== synth/aime / best_of_n" in out
    long_cot = out[out.index("== synth/aime / long_cot"):]
    table = [line.split("|") for line in long_cot.splitlines() if line.count("|") == 4]
    segments = [(row[0].strip(), row[1].strip()) for row in table[1:]]
    assert segments == [("flops", "qwen3-0.6b"), ("flops", "qwen3-8b"), ("eflops", "qwen3-8b")]
    assert "costlier ratio: FLOPs-guided choices need" in long_cot
    ratio = float(long_cot.split("need ")[1].split("x (max)")[0])
    summary = json.loads((tmp_path / "synth_aime" / "long_cot" / "summary.json").read_text())
    assert ratio == pytest.approx(summary["costlier_ratio"]["max"], rel=1e-2) and ratio > 5
    assert list(summary["policies"]["eflops"]) == ["dense", "block_topk-256"]
    fits = [line for line in long_cot.splitlines() if line.count("|") == 6]
    assert len(fits) == 1 + 2 * 2  # header + 2 cost models x 2 models


def test_strategy_and_policy_flags(results, tmp_path):
    result = _run(f"--results={results}", f"--out_dir={tmp_path}", "--grid_points=12", "--strategy=long_cot",
                  "--policy=all")
    assert result.returncode == 0, result.stderr
    assert "best_of_n" not in result.stdout and "policy all" in result.stdout
    assert sorted(os.listdir(tmp_path / "synth_aime")) == ["long_cot"]


def test_bad_flags_are_refused(results, tmp_path):
    policy = _run(f"--results={results}", f"--out_dir={tmp_path}", "--strategy=long_cot", "--policy=topk-64")
    assert policy.returncode != 0 and "topk-64" in policy.stderr and "block_topk-256" in policy.stderr


def test_analyzes_released_kinetics_traces(tmp_path):
    """Two presets' traces in the released Kinetics format (metadata line, then query / choices / prediction /
    score), priced with a tokenizer, analyzed as Best-of-N."""
    tokenizer = os.path.join(ROOT, "kinetics_jax", "assets", "tiny-random-qwen3")
    specs = []
    for model, right in (("qwen3-0.6b", [100, 0, 0, 100]), ("qwen3-8b", [100, 100, 100, 0])):
        path = tmp_path / f"{model}.jsonl"
        rows = [{"attn_local": 0, "attn_topk": None, "attn_block_topk": None, "attn_block_size": None}]
        rows += [{"query": f"What is {q} + {q}?", "choices": [str(2 * q)],
                  "prediction": [f"Thinking {'x ' * (20 * (q + 1))} \\boxed{{{2 * q}}}", "no idea"],
                  "score": [right[q], 0]} for q in range(4)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        specs.append(f"--kinetics_traces={model}:{path}")
    result = _run(*specs, f"--trace_tokenizer={tokenizer}", f"--out_dir={tmp_path / 'out'}", "--grid_points=12")
    assert result.returncode == 0, result.stderr
    assert "== aime24 / best_of_n" in result.stdout and "long_cot" not in result.stdout
    assert (tmp_path / "out" / "aime24" / "best_of_n" / "frontier.png").stat().st_size > 0
    bad = _run(f"--kinetics_traces=qwen9:{tmp_path / 'x'}", f"--trace_tokenizer={tokenizer}")
    assert bad.returncode != 0 and "preset" in bad.stderr
