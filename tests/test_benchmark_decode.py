"""scripts/benchmark_decode.py runs and prints its comparison table (tiny sizes; the numbers are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prints_a_table_for_each_batch():
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_decode.py"), "--batch=1,2",
                             "--prompt_len=8", "--new_tokens=4", "--repeats=1", "--layers=1"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "kinetics_jax tok/s" in lines[-3] and "transformers tok/s" in lines[-3]
    for line, batch in zip(lines[-2:], (1, 2)):
        cells = [c.strip() for c in line.split("|")]
        assert int(cells[0]) == batch and float(cells[1]) > 0 and float(cells[2]) > 0 and cells[3].endswith("x")
