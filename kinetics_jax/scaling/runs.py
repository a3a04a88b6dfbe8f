"""Evaluation records grouped into runs: the input of the scaling analysis.

A record is one (problem, sample) as `kinetics_jax.eval.results` writes it (and `read_records` reads it; extra
fields are ignored). A *run* is the records sharing (model, dataset, config): one configuration of a model on
a dataset, with its samples per problem, its attention policy and its truncation budgets.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Mapping, Sequence

from kinetics_jax.policies import AttentionConfig
from kinetics_jax.config import Qwen3Config

STRATEGIES = ("best_of_n", "long_cot")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One generated trace: prompt and generated tokens, final correctness, correctness cut at token budgets."""

    prompt_length: int
    length: int
    correct: bool
    truncation: Mapping[int, bool]


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """The records of one (model, dataset, config): `problems` maps problem_id -> its samples (by sample_index);
    truncation_budgets: the budgets the traces were re-graded at (config["truncation_budgets"] where the writer
    records it, and every key of the records' truncation dicts)."""

    model: str
    dataset: str
    strategy: str
    config: Qwen3Config
    attention: AttentionConfig
    max_new_tokens: int
    truncation_budgets: tuple[int, ...]
    problems: Mapping[str, tuple[Sample, ...]]

    @property
    def policy(self) -> str:
        """The policy's label (kinetics_jax.policies): runs are grouped and drawn by it."""
        return self.attention.policy.label()

    def describe(self) -> str:
        return f"{self.model} {self.dataset} {self.strategy} {self.policy} max_new_tokens={self.max_new_tokens}"


_REQUIRED = ("model", "model_config", "dataset", "problem_id", "sample_index", "prompt_length", "length", "correct",
             "config")


def group_runs(records: Sequence[Mapping[str, Any]]) -> list[Run]:
    """Groups records into runs: same model, dataset and config dict (records' extra fields are ignored)."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = collections.defaultdict(list)
    architectures: dict[str, str] = {}
    for index, record in enumerate(records):
        missing = [name for name in _REQUIRED if name not in record]
        if missing:
            raise ValueError(f"record {index} ({record.get('problem_id')!r}) lacks field(s) {', '.join(missing)}")
        arch = json.dumps(record["model_config"], sort_keys=True)
        if architectures.setdefault(record["model"], arch) != arch:
            raise ValueError(f"model {record['model']!r} appears with two different model_config dicts")
        groups[(record["model"], record["dataset"], json.dumps(record["config"], sort_keys=True))].append(record)
    return [_run(group) for group in groups.values()]


def _run(records: list[Mapping[str, Any]]) -> Run:
    first = records[0]
    config = first["config"]
    for name in ("strategy", "max_new_tokens", "attention"):
        if name not in config:
            raise ValueError(f"run of {first['model']!r} on {first['dataset']!r}: config lacks {name!r}")
    if config["strategy"] not in STRATEGIES:
        raise ValueError(f"run of {first['model']!r}: unknown strategy {config['strategy']!r} (known: {STRATEGIES})")
    problems: dict[str, dict[int, Sample]] = collections.defaultdict(dict)
    for record in records:
        samples = problems[str(record["problem_id"])]
        index = int(record["sample_index"])
        if index in samples:
            raise ValueError(f"run of {first['model']!r}: problem {record['problem_id']!r} sample {index} appears "
                             f"twice")
        samples[index] = Sample(prompt_length=int(record["prompt_length"]), length=int(record["length"]),
                                correct=bool(record["correct"]),
                                truncation={int(b): bool(v) for b, v in (record.get("truncation") or {}).items()})
    budgets = {int(b) for b in config.get("truncation_budgets") or ()}
    budgets |= {b for samples in problems.values() for s in samples.values() for b in s.truncation}
    return Run(model=first["model"], dataset=first["dataset"], strategy=config["strategy"],
               config=Qwen3Config.from_hf_config(first["model_config"]), attention=AttentionConfig.from_fields(config["attention"]),
               max_new_tokens=int(config["max_new_tokens"]), truncation_budgets=tuple(sorted(budgets)),
               problems={pid: tuple(s for _, s in sorted(by_index.items()))
                         for pid, by_index in sorted(problems.items())})
