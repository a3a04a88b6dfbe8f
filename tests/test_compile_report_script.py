"""scripts/compile_report.py end to end: a small Qwen3 compiled for a TPU and an H100 target on this CPU machine,
its JSON figures, a request that does not fit, and bad flags refused before any compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import kinetics_jax as kj
from kinetics_jax.cost import targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "compile_report.py")


def _run(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *flags], capture_output=True, text=True, cwd=ROOT, timeout=600)


def _need(*names: str) -> None:
    for name in names:
        if targets.unavailable(name):
            pytest.skip(f"{name}: {targets.unavailable(name)}")


def test_compile_report_for_tpu_and_cuda_writes_the_figures(tmp_path):
    """Qwen3-0.6B's shapes with 3 of its layers (an HF config.json via --config), so that the unrolled counting
    compile takes seconds."""
    _need("tpu-v6e", "cuda-h100")
    out, hlo, config = tmp_path / "report.json", tmp_path / "step.hlo", tmp_path / "config.json"
    config.write_text(json.dumps(dict(kj.Qwen3Config.preset("qwen3-0.6b").to_hf_dict(), num_hidden_layers=3)))
    done = _run("--target=tpu-v6e,cuda-h100", f"--config={config}", "--batch=4", "--context=1024",
                "--attention=block_topk-256", "--attention_backend=pallas", f"--json={out}",
                f"--hlo_out={hlo}")
    assert done.returncode == 0, done.stderr[-3000:]
    tpu, gpu = json.loads(out.read_text())
    for key in ("compiled", "argument_bytes", "output_bytes", "temp_bytes", "xla_bytes_accessed", "xla_flops",
                "analytic_bytes", "bytes_ratio", "roofline_seconds", "xla_seconds"):
        assert key in tpu and key in gpu, key
    assert tpu["compiled"] and gpu["compiled"] and tpu["copies"] == [] == gpu["copies"]
    assert tpu["temp_bytes"] < 0.1 * tpu["argument_bytes"]
    assert 0.85 < tpu["bytes_ratio"] < 1.3 and tpu["xla_seconds"] > 0
    assert gpu["xla_bytes_accessed"] is None and gpu["bytes_ratio"] is None  # XLA has no GPU cost analysis
    assert "tpu-v6e" in done.stdout and "roofline" in done.stdout and tpu["model_layers"] == 3
    assert "tpu_custom_call" in (tmp_path / "step.tpu-v6e.hlo").read_text()
    assert ".target sm_90" in (tmp_path / "step.cuda-h100.hlo").read_text() or \
        "__gpu$xla.gpu.triton" in (tmp_path / "step.cuda-h100.hlo").read_text()


def test_a_request_that_does_not_fit_says_so_with_the_numbers(tmp_path):
    """Qwen3-14B's 29.5 GB of bf16 weights on one 16 GiB v5e: refused from the argument sizes, before compiling."""
    _need("tpu-v5e")
    out = tmp_path / "report.json"
    done = _run("--target=tpu-v5e", "--preset=qwen3-14b", "--batch=1", "--context=256", f"--json={out}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "DOES NOT FIT" in done.stdout and "16.00 GiB of HBM" in done.stdout
    report = json.loads(out.read_text())
    assert not report["fits"] and report["argument_bytes"] > 29e9 and "more than its" in report["error"]
