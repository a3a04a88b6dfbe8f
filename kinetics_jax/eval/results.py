"""Evaluation results: an append-only jsonl with one record per (problem, sample), resumable after a kill.

The records (written by scripts/evaluate.py and the study, read by the scaling analysis) are one JSON object per
line, by the schema of kinetics_jax.eval.records (which builds them and says which are valid: `record_problem`).

Durability: records are appended as whole lines and fsync'ed per batch. A process killed mid-write leaves at most
one torn last line; `ResultsStore` detects it on open (no newline, or not JSON: invalid UTF-8 counts as not
JSON), truncates the file back to the last complete record and logs it, so a restarted run continues exactly
where the file ends: nothing is lost (what was fsync'ed stays) and nothing is duplicated (completed
(problem, sample) keys are skipped). `read_records` skips such a tail with a warning and leaves the file alone.

Everything else is corruption and is refused with one ValueError naming the file and line, never repaired:
- a bad line (not UTF-8, not JSON) anywhere but the last line;
- a newline-terminated last line that is valid JSON but not a valid record (not an object, a required field
  missing, a field of the wrong type): a torn write cannot produce a complete line of valid JSON, so this is
  damage (or a hand edit), not an interrupted append;
- a record repeating the (problem_id, sample_index) of an earlier one of the same run (same model, dataset and
  config), e.g. a copied line: "runs/e.jsonl:37 repeats problem 'aime-3' sample 2 of line 12". `read_records`
  applies this across all the files it reads; a `ResultsStore` file holds one run, so there the key is just
  (problem_id, sample_index).
`ResultsStore.append` checks each record by the same rules before writing it, so the store never writes a line
it would refuse on the next open.

`read_kinetics_traces` converts the released Kinetics trace format (docs/evaluation.md) into these records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from kinetics_jax import outputs
from kinetics_jax.policies import AttentionConfig, BlockTopK, OracleTopK, SlidingWindow
from kinetics_jax.eval.records import make_record, record_problem

log = logging.getLogger(__name__)


class _Keys:
    """Where each (run, problem_id, sample_index) was first read, a run being the records sharing (model, dataset,
    config). Records of a run are usually contiguous, so finding a record's run is one comparison."""

    def __init__(self) -> None:
        self._runs: list[tuple[str, str, dict[str, Any]]] = []
        self._last = -1
        self._first: dict[tuple[int, str, int], tuple[str, int]] = {}

    def _run(self, record: Mapping[str, Any]) -> int:
        ident = (record["model"], record["dataset"], record["config"])
        if self._last >= 0 and self._runs[self._last] == ident:
            return self._last
        for i, run in enumerate(self._runs):
            if run == ident:
                self._last = i
                return i
        self._runs.append(ident)
        self._last = len(self._runs) - 1
        return self._last

    def add(self, record: Mapping[str, Any], path: str, number: int) -> None:
        """Notes the key of the record at path:number; one read before raises ValueError("<path>:<number>
        repeats problem <id> sample <index> of line <n>", or "of <other path>:<n>" across files)."""
        key = (self._run(record), record["problem_id"], record["sample_index"])
        first = self._first.setdefault(key, (path, number))
        if first[1] != number or first[0] != path:
            where = f"line {first[1]}" if first[0] == path else f"{first[0]}:{first[1]}"
            raise ValueError(f"{path}:{number} repeats problem {key[1]!r} sample {key[2]} of {where}")


def _load(path: str, keys: _Keys) -> tuple[list[dict[str, Any]], int]:
    """(valid records of the complete lines of `path`, byte offset where they end): the one reader of results
    files, by the rules of the module docstring. The part after the last newline is torn; so is a final
    newline-terminated line that is not UTF-8 JSON. Blank lines are skipped. Any other bad line, a line that is
    not a valid record, or a repeated key (checked through `keys`) raises ValueError naming path:line."""
    records: list[dict[str, Any]] = []
    end = 0
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")  # b"\n" never occurs inside a UTF-8 multi-byte sequence
    last = len(lines) - 1  # the number of the last newline-terminated line
    for number, line in enumerate(lines[:-1], 1):  # the part after the last newline is never complete
        if not line.strip():
            end += len(line) + 1
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            if number == last and not lines[-1]:
                break  # the final newline-terminated line is garbage: a torn write, repaired by the caller
            raise ValueError(f"{path}:{number}: corrupt record in the middle of the file ({e})") from None
        problem = record_problem(record)
        if problem:
            raise ValueError(f"{path}:{number}: {problem}")
        keys.add(record, path, number)
        records.append(record)
        end += len(line) + 1
    return records, end


class ResultsStore:
    """The results file of one run, open for writing by this store alone. Opening it takes the file's output lock
    (kinetics_jax.outputs: a second writer, another process or another store, is refused with OutputBusyError),
    repairs a torn tail, refuses corruption (see the module docstring) and checks that the records already there
    belong to this run (the same config, and one model and dataset); `append` adds records durably. `close()`,
    or leaving a `with ResultsStore(...) as store:` block, releases the lock."""

    def __init__(self, path: str, run_config: dict[str, Any]):
        self.path = path
        self.run_config = json.loads(json.dumps(run_config))  # the JSON form, as records hold it
        self._records: list[dict[str, Any]] = []
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(outputs.exclusive(path))
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Releases the file's lock; the store cannot append after it."""
        self._lock.close()
        self._closed = True

    def __del__(self) -> None:  # a store dropped without close() frees its output
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self) -> None:
        path = self.path
        self._closed = False
        if os.path.exists(path):
            self._records, end = _load(path, _Keys())
            size = os.path.getsize(path)
            if end < size:
                log.warning("%s: dropping a torn last record (%d bytes) left by an interrupted write", path,
                            size - end)
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            for i, record in enumerate(self._records):
                if record["config"] != self.run_config:
                    raise ValueError(f"{path}: record {i + 1} was written by another run configuration "
                                     f"({record['config']}); resume with the same flags or use a new output")
                self._check_same_run(record, self._records[0], f"{path}: record {i + 1}")
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # One run per file, so (problem_id, sample_index) is unique here (`_load` checked it per run).
        self._done = {(r["problem_id"], r["sample_index"]) for r in self._records}

    @staticmethod
    def _check_same_run(record: Mapping[str, Any], first: Mapping[str, Any], where: str) -> None:
        """Refuses a record of another model or dataset than the file's first record: with this file's config
        they would form a second run in it."""
        for name in ("model", "dataset"):
            if record[name] != first[name]:
                raise ValueError(f"{where} is of {name} {record[name]!r}, but this file holds {name} "
                                 f"{first[name]!r}; use a new output")

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def done(self, problem_id: str, sample_index: int) -> bool:
        return (problem_id, sample_index) in self._done

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Appends records (each gets this run's config), then flushes and fsyncs. Each must be a valid record
        (`record_problem`) of this file's model and dataset whose (problem_id, sample_index) is not recorded yet;
        otherwise nothing of the batch is written."""
        if self._closed:
            raise ValueError(f"{self.path}: the store is closed")
        lines, added, keys = [], [], set()
        for i, record in enumerate(records):
            record = {**record, "config": self.run_config}
            problem = record_problem(record)
            if problem:
                raise ValueError(f"{self.path}: record {i} to append: {problem}")
            self._check_same_run(record, (self._records or added or [record])[0],
                                 f"{self.path}: record {i} to append")
            key = (record["problem_id"], record["sample_index"])
            if key in self._done or key in keys:
                raise ValueError(f"{self.path}: problem {key[0]!r} sample {key[1]} is already recorded")
            keys.add(key)
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            added.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        self._done |= keys
        self._records.extend(added)


def read_records(paths: str | Iterable[str]) -> list[dict[str, Any]]:
    """All complete records of one or more results files, by the rules of the module docstring: a torn last
    line is skipped with a warning (the file is left as it is); corruption, an invalid record, or a record
    repeating the (run, problem_id, sample_index) of one read before (in the same file or an earlier one of
    `paths`) raises ValueError naming path:line, and so does a file given twice."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    real = [os.path.realpath(path) for path in paths]
    for i, path in enumerate(paths):
        if real[i] in real[:i]:
            raise ValueError(f"{path}: given twice (as {paths[real.index(real[i])]} before)")
    out: list[dict[str, Any]] = []
    keys = _Keys()
    for path in paths:
        records, end = _load(path, keys)
        if end < os.path.getsize(path):
            log.warning("%s: ignoring a torn last record", path)
        out.extend(records)
    return out


def read_kinetics_traces(path: str, *, model: str, model_config: dict[str, Any], dataset: str,
                         count_tokens: Callable[[str], int], prompt_tokens: Callable[[str], int],
                         max_new_tokens: int) -> list[dict[str, Any]]:
    """Records from a released Kinetics trace file: jsonl whose first line is metadata (attn_local, attn_topk,
    attn_block_topk, attn_block_size: the sparse policy, absent or null for dense) and whose other lines hold
    query, choices or choice (the gold), prediction (the list of sampled texts) and score (0 or 100, one per
    prediction or one for all). Token counts come from the callables (the traces store text only)."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty trace file")
    meta = json.loads(lines[0])
    attention = _kinetics_attention(meta, path)
    records = []
    for number, line in enumerate(lines[1:], 2):
        row = json.loads(line)
        try:
            query, predictions, scores = row["query"], row["prediction"], row["score"]
            gold = row["choices"] if "choices" in row else row["choice"]
        except KeyError as e:
            raise ValueError(f"{path}:{number}: missing field {e} of the Kinetics trace format") from None
        gold = gold[0] if isinstance(gold, list) else gold
        predictions = predictions if isinstance(predictions, list) else [predictions]
        scores = scores if isinstance(scores, list) else [scores] * len(predictions)
        if len(scores) != len(predictions):
            raise ValueError(f"{path}:{number}: {len(scores)} scores for {len(predictions)} predictions")
        for s, (text, score) in enumerate(zip(predictions, scores)):
            records.append(make_record(
                model=model, model_config=model_config, dataset=dataset, problem_id=f"{dataset}-{number - 2}",
                gold=str(gold), sample_index=s, num_samples=len(predictions), prompt_length=prompt_tokens(query),
                length=count_tokens(text), finish_reason="unknown", text=text, answer=None,
                correct=float(score) >= 100.0, truncation={},
                config={"source": os.path.basename(path), "dataset": dataset, "strategy": "best_of_n",
                        "num_samples": len(predictions), "max_new_tokens": max_new_tokens, "attention": attention}))
    return records


def _kinetics_attention(meta: dict[str, Any], path: str) -> dict[str, Any]:
    """AttentionConfig fields (as a dict) of a Kinetics metadata line."""
    local = meta.get("attn_local") or 0
    if meta.get("attn_block_topk"):
        config = AttentionConfig(BlockTopK(local=local, block_topk=int(meta["attn_block_topk"]),
                                           block_size=int(meta.get("attn_block_size") or 16)))
    elif meta.get("attn_topk"):
        config = AttentionConfig(OracleTopK(local=local, topk=int(meta["attn_topk"])))
    elif local:
        config = AttentionConfig(SlidingWindow(local=local))
    else:
        config = AttentionConfig()
    return config.to_fields()
