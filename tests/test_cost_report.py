"""scripts/cost_report.py: the table, pricing a results jsonl, the measured column, and flag errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import kinetics_jax as kj
from kinetics_jax import cost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "cost_report.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def _rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")] for line in stdout.splitlines() if line.count("|") >= 5]


def test_table_prices_dense_and_each_budget():
    result = _run("--config=qwen3-8b", "--prompt_len=1024", "--gen_len=16384", "--num_samples=8",
                  "--budgets=256,1024")
    assert result.returncode == 0, result.stderr
    header, *rows = _rows(result.stdout)
    assert header[0] == "policy" and "Phi" in header
    assert [r[0].split(" (")[0] for r in rows] == ["dense", "block_topk-256", "block_topk-1024"]
    dense = cost.tts_cost(kj.Qwen3Config.preset("qwen3-8b"), prompt_len=1024, gen_lens=16384, num_samples=8)
    assert float(rows[0][3]) == pytest.approx(dense.eflops, rel=1e-3) and rows[0][6] == "1.000"
    assert float(rows[1][6]) < float(rows[2][6]) < 1.0  # a smaller budget costs less, both less than dense


def test_prices_a_results_jsonl(tmp_path):
    attention = {"kind": "block_topk", "sink": 4, "local": 0, "topk": None, "block_size": 16, "block_topk": 4,
                 "score": "mean", "dense_layers": [0], "backend": "xla"}
    path = tmp_path / "run.jsonl"
    records = [{"prompt_index": p, "sample_index": s, "prompt_length": 100 + p, "length": 50 * (s + 1),
                "attention": attention} for p in range(2) for s in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = _run("--config=qwen3-0.6b", f"--results={path}")
    assert result.returncode == 0, result.stderr
    _, *rows = _rows(result.stdout)
    assert len(rows) == 2 and rows[0][4].startswith("block_topk")
    expected = cost.tts_cost(kj.Qwen3Config.preset("qwen3-0.6b"), prompt_len=100, gen_lens=[50, 100, 150],
                             num_samples=3, attention=kj.AttentionConfig(kj.policies.BlockTopK(block_topk=4)))
    assert float(rows[0][5]) == pytest.approx(expected.eflops, rel=1e-3)
    path.write_text("not json\n")
    bad = _run("--config=qwen3-0.6b", f"--results={path}")
    assert bad.returncode != 0 and "run.jsonl:1" in bad.stderr


def test_profile_adds_the_measured_column(tmp_path):
    result = _run("--profile", "--prompt_len=20", "--gen_len=24", "--num_samples=2", "--budgets=16",
                  f"--profile_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    header, *rows = _rows(result.stdout)
    assert "measured s" in header and len(rows) == 2
    for row in rows:
        assert float(row[7]) > 0 and float(row[8]) > 0
    assert any(name.endswith(".xplane.pb") for _, _, files in os.walk(tmp_path) for name in files)


def test_xla_step_count_beside_the_analytic_parameter_flops():
    result = _run("--config=qwen3-0.6b", "--prompt_len=128", "--gen_len=64", "--num_samples=2", "--budgets=16",
                  "--xla")
    assert result.returncode == 0, result.stderr
    flops = next(line for line in result.stdout.splitlines() if line.startswith("FLOPs"))
    # float32 on CPU: XLA counts exactly the parameter matmuls plus norms / activations (~0.1%)
    assert 0.99 <= float(flops.split("|")[-1]) <= 1.02
