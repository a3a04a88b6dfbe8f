"""A real 2-process job on localhost: jax.distributed with gloo CPU collectives, 2 CPU devices per process.

scripts/generate.py restores an orbax checkpoint into a (2, 2) mesh spanning both processes and must write the
tokens a single process writes; scripts/evaluate.py spread over the two processes must write the records of a
single-process run. Both stream their samples through the continuous engine, its slots split over "data". Every launch is bounded in time and its process group is killed however the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import kinetics_jax as kj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = os.path.join(ROOT, "kinetics_jax", "assets", "tiny-random-qwen3")
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(script: str, args: list[str], processes: int, devices_per_process: int, tmp_path) -> list[str]:
    """Runs `script` as `processes` cooperating processes (or one plain process); returns their logs."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    port = _free_port()
    procs, logs = [], []
    try:
        for i in range(processes):
            pod = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}"]
                   if processes > 1 else [])
            log = open(tmp_path / f"{os.path.basename(script)}.{processes}.{i}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", script), *args, *pod],
                                          stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        deadline = time.monotonic() + TIMEOUT_S
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
        for proc, text in zip(procs, texts):
            assert proc.returncode == 0, text[-3000:]
        return texts
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def orbax_checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("pod") / "tiny")
    kj.convert_hf_checkpoint(EMBEDDED, path)
    return path


def test_two_process_generate_matches_one_process(orbax_checkpoint, tmp_path):
    common = [f"--checkpoint={orbax_checkpoint}", "--prompt=What is 2 + 3?", "--prompt=Name a prime.",
              "--prompt=Count to five.", "--num_samples=2", "--max_new_tokens=16", "--temperature=0",
              "--dtype=float32"]
    single = str(tmp_path / "single.jsonl")
    _run("generate.py", common + [f"--output={single}"], 1, 1, tmp_path)
    pod = str(tmp_path / "pod.jsonl")
    logs = _run("generate.py", common + [f"--output={pod}", "--mesh_shape=2,2"], 2, 2, tmp_path)
    for i, log in enumerate(logs):
        assert f"process {i} of 2" in log and "4 devices" in log and "'data': 2, 'model': 2" in log
    assert "wrote 6 samples" in logs[0] and "wrote" not in logs[1]  # only process 0 writes
    assert not os.path.exists(pod + ".tmp")
    expected = [json.loads(line) for line in open(single)]
    got = [json.loads(line) for line in open(pod)]
    assert [r["token_ids"] for r in got] == [r["token_ids"] for r in expected]
    assert got == expected


def test_evaluation_spread_over_two_processes_writes_single_host_records(tmp_path):
    dataset = tmp_path / "aime24.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)})
                               + "\n" for i in range(3)))
    common = [f"--dataset_path={dataset}", "--dataset=aime24", "--num_samples=2", "--max_new_tokens=12",
              "--truncation_budgets=8", "--max_num_seqs=4", "--dtype=float32", "--temperature=0"]
    single, pod = str(tmp_path / "single.jsonl"), str(tmp_path / "pod.jsonl")
    _run("evaluate.py", common + [f"--output={single}"], 1, 1, tmp_path)
    _run("evaluate.py", common + [f"--output={pod}", "--mesh_shape=2,1"], 2, 1, tmp_path)
    # Records are appended as samples finish, so their order follows the schedule (2 data shards here).
    key = lambda r: (r["problem_id"], r["sample_index"])
    expected = sorted((json.loads(line) for line in open(single)), key=key)
    got = sorted((json.loads(line) for line in open(pod)), key=key)
    assert len(got) == 6 and got == expected
    assert json.load(open(pod + ".summary.json")) == json.load(open(single + ".summary.json"))
