"""Evaluation results: an append-only jsonl with one record per (problem, sample), resumable after a kill.

A record (written by scripts/evaluate.py, read by the scaling analysis):

    model, model_config (HF config.json dict), dataset, problem_id, gold, sample_index, num_samples,
    prompt_length, length (generated tokens), finish_reason, text, token_ids, answer (extracted or null),
    correct, truncation {"<token budget>": correct when the trace is cut there}, cost {compute_flops,
    memory_bytes, eflops, hardware: this sample's share, tts_cost(N samples of its length) / N}, config (the
    run: checkpoint, dataset, strategy, num_samples, max_new_tokens, attention, sampling, seed)

Durability: records are appended as whole lines and fsync'ed per batch. A process killed mid-write leaves at most
one torn last line; `ResultsStore` detects it on open (no newline, or not JSON), truncates the file back to the
last complete record and logs it, so a restarted run continues exactly where the file ends: nothing is lost
(what was fsync'ed stays) and nothing is duplicated (completed (problem, sample) keys are skipped).

`read_kinetics_traces` converts the released Kinetics trace format (KINETICS.md §4) into these records.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Iterable, Sequence

from kinetics_jax.attention import AttentionConfig

log = logging.getLogger(__name__)


def _complete_lines(path: str) -> tuple[list[dict[str, Any]], int]:
    """(records of the complete lines, byte offset where they end). A last line without a newline or that is
    not JSON is torn; a bad line elsewhere is corruption and raises."""
    records: list[dict[str, Any]] = []
    end = 0
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], 1):  # the part after the last newline is never complete
        if not line.strip():
            end += len(line) + 1
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines) - 1 and not lines[-1]:
                break  # the final newline-terminated line is garbage: a torn write, repaired below
            raise ValueError(f"{path}:{number}: corrupt record in the middle of the file ({e})") from None
        end += len(line) + 1
    return records, end


class ResultsStore:
    """The results file of one run. Opening it repairs a torn tail and checks that the records already there
    belong to the same run configuration; `append` adds records durably."""

    def __init__(self, path: str, run_config: dict[str, Any]):
        self.path = path
        self.run_config = json.loads(json.dumps(run_config))  # the JSON form, as records hold it
        self._records: list[dict[str, Any]] = []
        if os.path.exists(path):
            self._records, end = _complete_lines(path)
            size = os.path.getsize(path)
            if end < size:
                log.warning("%s: dropping a torn last record (%d bytes) left by an interrupted write", path,
                            size - end)
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            for i, record in enumerate(self._records):
                if record.get("config") != self.run_config:
                    raise ValueError(f"{path}: record {i + 1} was written by another run configuration "
                                     f"({record.get('config')}); resume with the same flags or use a new output")
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._done = {(r["problem_id"], r["sample_index"]) for r in self._records}

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def done(self, problem_id: str, sample_index: int) -> bool:
        return (problem_id, sample_index) in self._done

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Appends records (each gets this run's config), then flushes and fsyncs. Duplicates are refused."""
        lines = []
        for record in records:
            key = (record["problem_id"], record["sample_index"])
            if key in self._done:
                raise ValueError(f"{self.path}: problem {key[0]!r} sample {key[1]} is already recorded")
            record = {**record, "config": self.run_config}
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            self._done.add(key)
            self._records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())


def read_records(paths: str | Iterable[str]) -> list[dict[str, Any]]:
    """All complete records of one or more results files (a torn last line is skipped with a warning)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    out: list[dict[str, Any]] = []
    for path in paths:
        records, end = _complete_lines(path)
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
            records.append({
                "model": model, "model_config": model_config, "dataset": dataset,
                "problem_id": f"{dataset}-{number - 2}", "gold": str(gold), "sample_index": s,
                "num_samples": len(predictions), "prompt_length": prompt_tokens(query),
                "length": count_tokens(text), "finish_reason": "unknown", "text": text, "answer": None,
                "correct": float(score) >= 100.0, "truncation": {},
                "config": {"source": os.path.basename(path), "dataset": dataset, "strategy": "best_of_n",
                           "num_samples": len(predictions), "max_new_tokens": max_new_tokens,
                           "attention": attention},
            })
    return records


def _kinetics_attention(meta: dict[str, Any], path: str) -> dict[str, Any]:
    """AttentionConfig fields (as a dict) of a Kinetics metadata line."""
    local = meta.get("attn_local") or 0
    if meta.get("attn_block_topk"):
        config = AttentionConfig(kind="block_topk", local=local, block_topk=int(meta["attn_block_topk"]),
                                 block_size=int(meta.get("attn_block_size") or 16))
    elif meta.get("attn_topk"):
        config = AttentionConfig(kind="topk", local=local, topk=int(meta["attn_topk"]))
    elif local:
        config = AttentionConfig(kind="sliding_window", local=local)
    else:
        config = AttentionConfig()
    return {**dataclasses.asdict(config), "dense_layers": list(config.dense_layers)}
