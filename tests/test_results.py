"""The results store: append-only, torn-tail repair, run-config check, duplicates, corrupt and invalid records (one
ValueError naming file:line); the Kinetics trace reader."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest

from kinetics_jax import outputs
from kinetics_jax.eval import records, results

CONFIG = {"checkpoint": "/ckpt", "num_samples": 2, "attention": {"kind": "dense"}}


def _record(problem: str, sample: int, **fields) -> dict:
    """A record as scripts/evaluate.py writes it, less the config (`ResultsStore.append` adds it)."""
    return {"model": "qwen3-0.6b", "model_config": {"model_type": "qwen3"}, "dataset": "aime24",
            "problem_id": problem, "gold": "1", "sample_index": sample, "num_samples": 2, "prompt_length": 5,
            "length": 10 + sample, "finish_reason": "stop", "text": "\\boxed{1}", "token_ids": [1, 2],
            "answer": "1", "correct": sample == 0, "truncation": {}, **fields}


def _line(record: dict) -> bytes:
    return (json.dumps({**record, "config": CONFIG}) + "\n").encode()


def test_append_and_reopen(tmp_path):
    path = str(tmp_path / "run" / "eval.jsonl")
    with results.ResultsStore(path, CONFIG) as store:
        store.append([_record("p0", 0), _record("p0", 1)])
        with pytest.raises(outputs.OutputBusyError, match="already being written by this process"):
            results.ResultsStore(path, CONFIG)  # a second writer of the file, even in this process
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


def _store_with(path, *extra: bytes) -> bytes:
    """Writes p0 samples 0 and 1 through a store, then appends raw bytes; returns the bytes of the valid part."""
    results.ResultsStore(str(path), CONFIG).append([_record("p0", 0), _record("p0", 1)])
    whole = path.read_bytes()
    path.write_bytes(whole + b"".join(extra))
    return whole


def _refused(path, match: str) -> None:
    """Opening a store and read_records both raise one ValueError matching `match`; the file is left alone."""
    before = path.read_bytes()
    with pytest.raises(ValueError, match=match):
        results.ResultsStore(str(path), CONFIG)
    with pytest.raises(ValueError, match=match):
        results.read_records(str(path))
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------------------ duplicates (case 1)
def test_a_copied_line_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "e.jsonl"
    results.ResultsStore(str(path), CONFIG).append([_record("aime-3", 0), _record("aime-3", 1)])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines) + b"\n" + lines[-1])  # `tail -1 e.jsonl >> e.jsonl`, after a blank line
    _refused(path, re.escape(f"{path}:4 repeats problem 'aime-3' sample 1 of line 2"))


def test_read_records_refuses_a_repeat_across_files_but_not_across_runs(tmp_path):
    path = tmp_path / "e.jsonl"
    _store_with(path)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=re.escape(f"{copy}:1 repeats problem 'p0' sample 0 of {path}:1")):
        results.read_records([str(path), str(copy)])
    with pytest.raises(ValueError, match="given twice"):
        results.read_records([str(path), str(tmp_path / "." / "e.jsonl")])
    # One file may hold several runs (model, dataset, config): their keys are independent.
    other = tmp_path / "runs.jsonl"
    other.write_bytes(_line(_record("p0", 0)) + _line(_record("p0", 0, model="qwen3-8b"))
                      + (json.dumps({**_record("p0", 0), "config": {**CONFIG, "seed": 1}}) + "\n").encode())
    assert len(results.read_records(str(other))) == 3


def test_a_store_refuses_a_second_model_or_dataset(tmp_path):
    path = tmp_path / "e.jsonl"
    store = results.ResultsStore(str(path), CONFIG)
    with pytest.raises(ValueError, match="record 1 to append is of model 'qwen3-8b'"):
        store.append([_record("p0", 0), _record("p1", 0, model="qwen3-8b")])
    store.close()
    _store_with(path, _line(_record("p1", 0, dataset="math500")))
    with pytest.raises(ValueError, match="record 3 is of dataset 'math500'"):
        results.ResultsStore(str(path), CONFIG)


def test_a_failed_append_writes_and_remembers_nothing(tmp_path):
    path = tmp_path / "e.jsonl"
    store = results.ResultsStore(str(path), CONFIG)
    with pytest.raises(ValueError, match="already recorded"):
        store.append([_record("p0", 0), _record("p0", 0)])
    with pytest.raises(ValueError, match="record 1 to append: field 'sample_index'"):
        store.append([_record("p0", 0), _record("p0", 1, sample_index="1")])
    assert not store.done("p0", 0) and store.records == [] and not path.exists()
    store.append([_record("p0", 0)])
    store.close()
    assert len(results.ResultsStore(str(path), CONFIG).records) == 1


# ------------------------------------------------------------------ a complete last line that is no record (case 2)
@pytest.mark.parametrize("line, problem", [
    (b"[1, 2]", "not a record: an array, not a JSON object"),
    (b"5", "not a record: an integer, not a JSON object"),
    (b'"x"', "not a record: a string, not a JSON object"),
    (b"null", "not a record: null, not a JSON object"),
    (b'{"problem_id": "p1"}', "record lacks field(s) model, model_config, dataset, gold, sample_index"),
])
def test_a_complete_last_line_of_json_that_is_no_record_is_refused(tmp_path, line, problem):
    path = tmp_path / "eval.jsonl"
    _store_with(path, line + b"\n")
    _refused(path, re.escape(f"{path}:3: {problem}"))


def test_a_last_record_lacking_a_field_is_refused(tmp_path):
    path = tmp_path / "eval.jsonl"
    record = {**_record("p1", 0), "config": CONFIG}
    del record["sample_index"]
    _store_with(path, json.dumps(record).encode() + b"\n")
    _refused(path, re.escape(f"{path}:3: record lacks field(s) sample_index"))


@pytest.mark.parametrize("tail", [b"[1, 2]", b"5", b'{"problem_id": "p1"}', _line(_record("p1", 0))[:-1]])
def test_a_last_line_without_newline_is_torn_whatever_it_holds(tmp_path, tail):
    path = tmp_path / "eval.jsonl"
    whole = _store_with(path, tail)
    assert len(results.read_records(str(path))) == 2 and path.read_bytes() == whole + tail
    assert len(results.ResultsStore(str(path), CONFIG).records) == 2 and path.read_bytes() == whole


# --------------------------------------------------------------------------------------- invalid UTF-8 (case 3)
@pytest.mark.parametrize("tail", [b'\xff\xfe{"problem', b'\xff\xfe{"problem\n', b'{"text": "\xe9t\xe9"}\n',
                                  b"\xc3\n"])
def test_a_torn_last_line_of_invalid_utf8_is_repaired(tmp_path, caplog, tail):
    path = tmp_path / "eval.jsonl"
    whole = _store_with(path, tail)
    with caplog.at_level(logging.WARNING):
        assert len(results.read_records(str(path))) == 2
        store = results.ResultsStore(str(path), CONFIG)
    assert "torn" in caplog.text and path.read_bytes() == whole and len(store.records) == 2


@pytest.mark.parametrize("bad", [b'\xff\xfe{"problem\n', _line(_record("p0", 1)).replace(b"boxed", b"b\xe9xed")])
def test_invalid_utf8_in_the_middle_is_corruption(tmp_path, bad):
    path = tmp_path / "eval.jsonl"
    path.write_bytes(_line(_record("p0", 0)) + bad + _line(_record("p1", 0)))
    _refused(path, re.escape(f"{path}:2: corrupt record in the middle of the file (") + ".*utf-8")


# ----------------------------------------------------------------------------------------- field types (case 4)
@pytest.mark.parametrize("field, value, problem", [
    ("sample_index", "1", "field 'sample_index' must be an integer, got '1' (a string)"),
    ("sample_index", 1.0, "field 'sample_index' must be an integer, got 1.0 (a number)"),
    ("sample_index", True, "field 'sample_index' must be an integer, got True (a boolean)"),
    ("sample_index", 2, "field 'sample_index' must be in [0, num_samples=2), got 2"),
    ("problem_id", 3, "field 'problem_id' must be a string, got 3 (an integer)"),
    ("correct", 1, "field 'correct' must be a boolean, got 1 (an integer)"),
    ("correct", "true", "field 'correct' must be a boolean, got 'true' (a string)"),
    ("length", "10", "field 'length' must be an integer, got '10' (a string)"),
    ("length", None, "field 'length' must be an integer, got None (null)"),
    ("length", -1, "field 'length' must be >= 0, got -1"),
    ("answer", 1, "field 'answer' must be a string or null, got 1 (an integer)"),
    ("token_ids", "1 2", "field 'token_ids' must be an array, got '1 2' (a string)"),
])
def test_fields_of_the_wrong_type_are_refused_naming_file_line_and_field(tmp_path, field, value, problem):
    path = tmp_path / "eval.jsonl"
    path.write_bytes(_line(_record("p0", 0)) + _line(_record("p1", 1, **{field: value})) + _line(_record("p2", 0)))
    _refused(path, re.escape(f"{path}:2: {problem}"))
    with pytest.raises(ValueError, match=re.escape(f"record 0 to append: {problem}")):
        results.ResultsStore(str(tmp_path / "new.jsonl"), CONFIG).append([_record("p1", 1, **{field: value})])


def test_a_long_value_is_shortened_in_the_message(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_bytes(_line(_record("p0", 0, problem_id=["x" * 500])) + _line(_record("p1", 0)))
    with pytest.raises(ValueError) as error:
        results.read_records(str(path))
    assert len(str(error.value)) < len(str(path)) + 120 and "..." in str(error.value)


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


def test_a_second_process_cannot_write_the_file(tmp_path):
    """Two evaluate.py runs on one output used to both append every record: the store now holds the file's lock
    and the second writer is refused before reading it."""
    path = str(tmp_path / "e.jsonl")
    code = (f"import sys; from kinetics_jax.eval import results\n"
            f"try:\n    results.ResultsStore({path!r}, {CONFIG!r})\n"
            f"except ValueError as e:\n    print(e); sys.exit(3)\n")
    with results.ResultsStore(path, CONFIG) as store:
        store.append([_record("p0", 0)])
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, JAX_PLATFORMS="cpu"))
        assert proc.returncode == 3 and "is being written by another process" in proc.stdout, proc
    with results.ResultsStore(path, CONFIG) as store:  # released on close
        assert len(store.records) == 1
    with pytest.raises(ValueError, match="the store is closed"):
        store.append([_record("p0", 1)])
    assert sorted(os.listdir(tmp_path)) == ["e.jsonl"]  # no lock file left


def test_truncation_rule_and_record_order():
    # A trace that ended within the budget keeps its final grade; a longer one reads its entry, or is unknown.
    assert records.correct_within(64, length=60, correct=True, truncation={64: False}) is True
    assert records.correct_within(64, length=100, correct=True, truncation={64: False}) is False
    assert records.correct_within(32, length=100, correct=True, truncation={64: False}) is None
    record = records.make_record(**{k: v for k, v in _record("p0", 0).items() if k != "truncation"}, cost=None)
    assert list(record) == [k for k in _record("p0", 0) if k != "truncation"]
    assert records.record_problem({**record, "config": CONFIG}) is None
