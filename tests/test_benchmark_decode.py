"""scripts/benchmark_decode.py runs each mode and prints its table (tiny sizes; the numbers are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_decode.py"), "--repeats=1",
                           "--shape=tiny", *flags], capture_output=True, text=True, env=env, timeout=300)


def _rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")] for line in stdout.strip().splitlines() if line.count("|") >= 3]


def test_attention_and_model_modes_time_xla_and_mark_pallas_unmeasured_on_cpu():
    for mode in ("attention", "model"):
        result = _run(f"--mode={mode}", "--layers=2", "--context=64,96", "--batch=2", "--steps=2",
                      "--attention=dense@xla,block_topk-32@xla,dense@pallas", "--dtype=float32")
        assert result.returncode == 0, result.stderr
        header, *rows = _rows(result.stdout)
        assert header[:3] == ["context", "batch", "variant"]
        assert len(rows) == 6
        for cells in rows:
            if cells[2] == "dense@pallas":
                assert cells[3].startswith("not measured")
            else:
                assert float(cells[3]) > 0 and float(cells[4]) > 0 and cells[5].endswith("x")


def test_unknown_variant_is_refused():
    result = _run("--attention=block_topk-30@xla", "--context=64", "--batch=1")
    assert result.returncode != 0 and "whole number of 16-token blocks" in result.stderr
