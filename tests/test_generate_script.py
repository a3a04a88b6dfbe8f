"""scripts/generate.py end to end on the embedded checkpoint: jsonl output, chat template, flag errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "generate.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)


def test_generates_jsonl_records(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"problem": p}) for p in ("1+1?", "Name a prime.", "x")) + "\n")
    out = tmp_path / "samples.jsonl"
    result = _run(f"--prompts_file={prompts}", "--num_samples=2", "--max_new_tokens=12", "--max_num_seqs=2",
                  "--temperature=0", f"--output={out}")
    assert result.returncode == 0, result.stderr
    assert "tokens/s" in result.stderr and "samples:" in result.stderr  # throughput log and progress bar
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == [(p, s) for p in range(3) for s in range(2)]
    for r in records:
        assert 1 <= r["length"] == len(r["token_ids"]) <= 12 and r["finish_reason"] in ("eos", "length")
        assert all(0 <= t < 512 for t in r["token_ids"])
    # greedy: the two samples of a prompt are identical
    assert records[0]["token_ids"] == records[1]["token_ids"]
    assert not os.path.exists(str(out) + ".tmp")


def test_sparse_attention_flags(tmp_path):
    out = tmp_path / "sparse.jsonl"
    result = _run("--prompt=Count to ten.", "--max_new_tokens=40", "--temperature=0", "--attention=block_topk-16",
                  "--attention_backend=pallas", f"--output={out}")
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 1
