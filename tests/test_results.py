"""The results store: append-only, torn-tail repair, run-config check, duplicates; the Kinetics trace reader."""

from __future__ import annotations

import json
import logging

import pytest

from kinetics_jax.eval import results

CONFIG = {"checkpoint": "/ckpt", "num_samples": 2, "attention": {"kind": "dense"}}


def _record(problem: str, sample: int) -> dict:
    return {"problem_id": problem, "sample_index": sample, "length": 10 + sample, "correct": sample == 0}


def test_append_and_reopen(tmp_path):
    path = str(tmp_path / "run" / "eval.jsonl")
    store = results.ResultsStore(path, CONFIG)
    store.append([_record("p0", 0), _record("p0", 1)])
    again = results.ResultsStore(path, CONFIG)
    assert [(r["problem_id"], r["sample_index"]) for r in again.records] == [("p0", 0), ("p0", 1)]
    assert again.done("p0", 1) and not again.done("p1", 0)
    assert all(r["config"] == CONFIG for r in again.records)
    with pytest.raises(ValueError, match="already recorded"):
        again.append([_record("p0", 1)])


def test_torn_last_line_is_repaired(tmp_path, caplog):
    path = tmp_path / "eval.jsonl"
    results.ResultsStore(str(path), CONFIG).append([_record("p0", 0), _record("p0", 1)])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"problem_id": "p1", "sample_ind')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        store = results.ResultsStore(str(path), CONFIG)
    assert "torn" in caplog.text
    assert path.read_bytes() == whole and len(store.records) == 2
    store.append([_record("p1", 0)])
    assert len(results.read_records(str(path))) == 3


def test_corruption_in_the_middle_and_other_configs_are_refused(tmp_path):
    path = tmp_path / "eval.jsonl"
    results.ResultsStore(str(path), CONFIG).append([_record("p0", 0)])
    with pytest.raises(ValueError, match="another run configuration"):
        results.ResultsStore(str(path), {**CONFIG, "num_samples": 4})
    path.write_text("garbage\n" + path.read_text())
    with pytest.raises(ValueError, match="eval.jsonl:1"):
        results.ResultsStore(str(path), CONFIG)


def test_reads_the_kinetics_trace_format(tmp_path):
    path = tmp_path / "aime24_qwen3-1.7b_block.jsonl"
    lines = [{"attn_local": 0, "attn_topk": None, "attn_block_topk": 64, "attn_block_size": 16},
             {"query": "What is 1+1?", "choices": ["2"], "prediction": ["... \\boxed{2}", "... \\boxed{3}"],
              "score": [100, 0]},
             {"query": "What is 2+3?", "choice": "5", "prediction": ["so \\boxed{5}"], "score": 100}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = results.read_kinetics_traces(str(path), model="qwen3-1.7b", model_config={"model_type": "qwen3"},
                                           dataset="aime24", count_tokens=len, prompt_tokens=lambda q: 7,
                                           max_new_tokens=32768)
    assert [(r["problem_id"], r["sample_index"], r["correct"]) for r in records] == [
        ("aime24-0", 0, True), ("aime24-0", 1, False), ("aime24-1", 0, True)]
    assert records[0]["gold"] == "2" and records[2]["gold"] == "5"
    assert records[0]["length"] == len("... \\boxed{2}") and records[0]["prompt_length"] == 7
    attention = records[0]["config"]["attention"]
    assert attention["kind"] == "block_topk" and attention["block_topk"] == 64 and attention["block_size"] == 16
    assert records[0]["num_samples"] == 2 and records[2]["num_samples"] == 1
    path.write_text(json.dumps(lines[0]) + "\n" + json.dumps({"query": "x", "prediction": ["y"]}) + "\n")
    with pytest.raises(ValueError, match="missing field"):
        results.read_kinetics_traces(str(path), model="m", model_config={}, dataset="aime24", count_tokens=len,
                                     prompt_tokens=len, max_new_tokens=1)
