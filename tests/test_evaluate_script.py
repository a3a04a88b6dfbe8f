"""scripts/evaluate.py on the embedded tiny checkpoint: records, summary, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "evaluate.py")
PROBLEMS = 8


def _dataset(tmp_path) -> str:
    path = tmp_path / "aime24.jsonl"
    rows = [{"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(PROBLEMS)]
    rows.insert(3, {"id": "q-long", "problem": "word " * 5000, "answer": "1"})  # over the 4096-token context
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _command(dataset: str, output: str) -> list[str]:
    return [sys.executable, SCRIPT, f"--dataset_path={dataset}", "--dataset=aime24", "--num_samples=2",
            "--max_new_tokens=24", "--truncation_budgets=8,16", "--max_num_seqs=1", "--dtype=float32",
            "--skip_overlong", f"--output={output}"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")


def _keys(path: str) -> list[tuple]:
    rows = [json.loads(line) for line in open(path)]
    return sorted((r["problem_id"], r["sample_index"], tuple(r["token_ids"]), r["correct"]) for r in rows)


def test_evaluates_and_resumes_after_a_kill(tmp_path):
    dataset = _dataset(tmp_path)
    whole = str(tmp_path / "whole.jsonl")
    result = subprocess.run(_command(dataset, whole), capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in open(whole)]
    assert len(records) == 2 * PROBLEMS
    for r in records:
        assert 1 <= r["length"] == len(r["token_ids"]) <= 24 and isinstance(r["correct"], bool)
        assert set(r["truncation"]) <= {"8", "16"} and r["cost"]["eflops"] > 0
        assert r["model"] == "tiny-random-qwen3" and r["config"]["num_samples"] == 2
    summary = json.load(open(whole + ".summary.json"))
    assert summary["problems"] == PROBLEMS and {"pass@1", "pass@2", "maj@2", "eflops_per_problem"} <= set(summary)
    assert summary["skipped_problems"] == ["q-long"] and "skipping problem 'q-long'" in result.stderr
    table = open(whole + ".per_query.csv").read().splitlines()
    assert table[0].startswith("problem_id") or "problem_id" in table[0].split(",")
    assert len(table) == 1 + PROBLEMS
    assert "pass@2" in result.stdout and "sample" in result.stderr  # summary table and progress bar

    # Kill a second run once some samples are written (one slot: they finish in (problem, sample) order),
    # tear its last line, resume: the same records.
    killed = str(tmp_path / "killed.jsonl")
    proc = subprocess.Popen(_command(dataset, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env())
    try:
        deadline = time.time() + 240
        while time.time() < deadline and (not os.path.exists(killed) or open(killed).read().count("\n") < 4):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    written = open(killed).read().count("\n")
    assert 4 <= written < 2 * PROBLEMS, written  # killed mid-run
    with open(killed, "a") as f:
        f.write('{"problem_id": "q7", "sample_')  # a torn write
    resumed = subprocess.run(_command(dataset, killed), capture_output=True, text=True, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "torn" in resumed.stderr and f"{written // 2} already done" in resumed.stderr
    assert _keys(killed) == _keys(whole)
