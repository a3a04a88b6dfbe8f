"""scripts/benchmark_engine.py runs both workloads and prints their tables (tiny sizes; only the table's shape and
the workload's own facts are checked, not the speed), transformers timed in its own process."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_engine.py"), "--repeats=1",
                           *flags], capture_output=True, text=True, env=env, timeout=600)


def _rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")] for line in stdout.strip().splitlines() if line.count("|") >= 3]


def test_heavy_tailed_rows_cover_both_engines_and_the_peer():
    result = _run("--prompts=3", "--samples=4", "--max_new_tokens=48", "--max_num_seqs=4", "--chunk_steps=8",
                  "--peer_batch=6")
    assert result.returncode == 0, result.stderr
    header, *rows = _rows(result.stdout)
    assert header[:3] == ["engine", "lengths", "tokens"] and header[-1] == "vs fixed"
    engines = [cells[0] for cells in rows]
    assert engines == ["continuous S=4 K=8", "continuous S=4 K=8", "static batch",
                       "transformers (own process, batch 6)"]
    heavy, fixed, static, peer = rows
    assert heavy[1] == "heavy-tailed" and fixed[1].startswith("fixed ") and fixed[-1] == "1.00x"
    assert int(heavy[2]) <= 12 * 48 and float(heavy[5]) > 0 and heavy[-1].endswith("x")
    assert 0 < int(static[2]) <= 12 * 48
    assert float(static[6]) > float(heavy[6])  # it reserves max_new_tokens for every sample
    assert int(peer[2]) > 0 and float(peer[5]) > 0


def test_fixed_workload_prints_a_row_per_batch():
    result = _run("--workload=fixed", "--batch=1,2", "--prompt_len=8", "--new_tokens=4")
    assert result.returncode == 0, result.stderr
    header, *rows = _rows(result.stdout)
    assert header[1:4] == ["static tok/s", "continuous tok/s", "transformers tok/s"]
    for cells, batch in zip(rows, (1, 2), strict=True):
        assert int(cells[0]) == batch and all(float(c) > 0 for c in cells[1:4]) and cells[4].endswith("x")
