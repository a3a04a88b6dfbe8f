"""The miniature Kinetics study: models x attention policies x {Best-of-N, long CoT}, priced, and analyzed.

    tasks = study.ChaseTask()                                   # the embedded default (or study.MathTask(...))
    for name in ("tiny-s", "tiny-m", "tiny-l"):
        model, tokenizer = kj.load_checkpoint(name, dtype=jnp.float32), kj.Tokenizer.from_dir(name)
        for policy in ("dense", "block_topk-32"):
            study.run_config(model, tokenizer, name, task, study.parse_policy(policy), settings, out_dir, bar)
    report = study.analyze(out_dir, settings)

Each (model, policy) samples N chains per problem once; the same samples are recorded twice, as a Best-of-N run
(k of the N samples, k = 1, 2, 4, ...) and as a long-CoT run (each sample cut at the truncation budgets), in the
results format of kinetics_jax.eval.results (resumable: a killed study continues where it stopped). The analysis
is kinetics_jax.scaling's: frontiers under FLOPs and eFLOPs, the optimal model per budget, dense vs sparse.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from typing import Any, Protocol, Sequence

import numpy as np

from kinetics_jax import scaling
from kinetics_jax.attention import AttentionConfig
from kinetics_jax.eval import datasets, grading, metrics, results
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.sampling import GenerationResult, SamplingConfig, generate
from kinetics_jax.tiny import task as chase
from kinetics_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Item:
    """One problem: id, prompt text (before the tokenizer's template, if any) and gold answer."""

    id: str
    prompt: str
    gold: str


class Task(Protocol):
    """What the study evaluates on: its problems, how a prompt is tokenized, and how a generated text is graded."""

    name: str
    max_new_tokens: int
    truncation_budgets: tuple[int, ...]

    def items(self, count: int) -> list[Item]: ...
    def prompt_ids(self, item: Item, tokenizer: Tokenizer) -> list[int]: ...
    def grade(self, text: str, gold: str) -> tuple[str | None, bool]: ...


@dataclasses.dataclass(frozen=True)
class ChaseTask:
    """The pointer-chasing task of the tiny family (kinetics_jax/tiny/task.py) on evaluation seed `seed` (training
    used seed 0). Generation may run to the longest solution; the budgets cut chains short of it."""

    seed: int = 1
    name: str = "chase"
    max_new_tokens: int = chase.MAX_TOKENS - chase.PROMPT_TOKENS
    truncation_budgets: tuple[int, ...] = (32, 64, 96, 104, 112, 120)

    def items(self, count: int) -> list[Item]:
        problems = [chase.make_problem(self.seed, i) for i in range(count)]
        return [Item(p.id, p.prompt(), p.answer) for p in problems]

    def prompt_ids(self, item: Item, tokenizer: Tokenizer) -> list[int]:
        return tokenizer.encode(item.prompt)

    def grade(self, text: str, gold: str) -> tuple[str | None, bool]:
        answer = chase.extract_answer(text)
        return answer, answer == gold


@dataclasses.dataclass(frozen=True)
class MathTask:
    """A math dataset (kinetics_jax.eval.datasets) in the Kinetics prompt and the chat template, graded by
    math-verify: the study on real Qwen3 checkpoints."""

    path: str
    name: str = "aime24"
    max_new_tokens: int = 32768
    truncation_budgets: tuple[int, ...] = (2048, 4096, 8192, 16384)
    enable_thinking: bool = True

    def items(self, count: int) -> list[Item]:
        problems = datasets.load_problems(self.path, self.name)[:count]
        return [Item(p.id, p.problem, p.answer) for p in problems]

    def prompt_ids(self, item: Item, tokenizer: Tokenizer) -> list[int]:
        problem = datasets.Problem(id=item.id, problem=item.prompt, answer=item.gold, solution=None, dataset=self.name)
        return datasets.prompt_ids(problem, tokenizer, enable_thinking=self.enable_thinking)

    def grade(self, text: str, gold: str) -> tuple[str | None, bool]:
        answer = grading.extract_answer(text)
        return answer, grading.answer_is_correct(answer, gold)


@dataclasses.dataclass(frozen=True)
class Settings:
    """problems: how many; num_samples: N per problem; problems_per_batch: problems decoded together (x N
    sequences: XLA:CPU slows down super-linearly past a few hundred); hardware: what eFLOPs are priced on."""

    problems: int = 64
    num_samples: int = 8
    problems_per_batch: int = 16
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0
    hardware: str = "B200"

    def __post_init__(self) -> None:
        for name in ("problems", "num_samples", "problems_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"study setting {name} must be >= 1, got {getattr(self, name)}")


def parse_policy(label: str, block_size: int = 16) -> AttentionConfig:
    """The attention policy of a label as kinetics_jax.scaling.policy_label writes it: "dense", "block_topk-64"
    (64 tokens = 4 blocks of `block_size`), "topk-64", "sliding_window-64". Sink and local keep their defaults."""
    kind, _, tokens = label.partition("-")
    if kind == "dense" and not tokens:
        return AttentionConfig()
    if kind not in ("block_topk", "topk", "sliding_window") or not tokens.isdigit() or int(tokens) < 1:
        raise ValueError(f"unknown attention policy {label!r}: expected dense, block_topk-<tokens>, topk-<tokens> or "
                         f"sliding_window-<tokens>")
    n = int(tokens)
    if kind == "block_topk":
        if n % block_size:
            raise ValueError(f"policy {label!r}: {n} tokens is not a whole number of {block_size}-token blocks")
        return AttentionConfig(kind=kind, block_size=block_size, block_topk=n // block_size)
    return AttentionConfig(kind=kind, topk=n) if kind == "topk" else AttentionConfig(kind=kind, local=n)


def _run_config(task: Task, settings: Settings, attention: AttentionConfig, strategy: str, checkpoint: str
                ) -> dict[str, Any]:
    return {"checkpoint": checkpoint, "dataset": task.name, "problems": settings.problems, "strategy": strategy,
            "num_samples": settings.num_samples, "max_new_tokens": task.max_new_tokens,
            "truncation_budgets": list(task.truncation_budgets) if strategy == "long_cot" else [],
            "attention": {**dataclasses.asdict(attention), "dense_layers": list(attention.dense_layers)},
            "sampling": dataclasses.asdict(settings.sampling), "seed": settings.seed}


def records_path(out_dir: str, model: str, attention: AttentionConfig, strategy: str) -> str:
    """Where the records of one run live: <out_dir>/records/<model>.<policy>.<strategy>.jsonl."""
    return os.path.join(out_dir, "records", f"{model}.{scaling.policy_label(attention)}.{strategy}.jsonl")


def _records(item: Item, prompt_len: int, result: GenerationResult, p: int, task: Task, tokenizer: Tokenizer,
             model: Qwen3ForCausalLM, name: str, budgets: Sequence[int]) -> list[dict[str, Any]]:
    """The N records of prompt p of a result (truncation: correctness of each sample cut at each budget)."""
    out = []
    for s in range(result.tokens.shape[1]):
        tokens = result.sequences(p, s)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        answer, correct = task.grade(text, item.gold)
        truncation = {str(b): task.grade(tokenizer.decode(tokens[:b], skip_special_tokens=True), item.gold)[1]
                      for b in budgets if b < len(tokens)}
        out.append({"model": name, "model_config": model.config.to_hf_dict(), "dataset": task.name,
                    "problem_id": item.id, "gold": item.gold, "sample_index": s,
                    "num_samples": result.tokens.shape[1], "prompt_length": prompt_len, "length": len(tokens),
                    "finish_reason": str(result.finish_reasons[p, s]), "text": text, "token_ids": tokens,
                    "answer": answer, "correct": bool(correct), "truncation": truncation})
    return out


def run_config(model: Qwen3ForCausalLM, tokenizer: Tokenizer, name: str, task: Task, attention: AttentionConfig,
               settings: Settings, out_dir: str, bar: Any = None, checkpoint: str = "") -> None:
    """Samples N chains per problem of `task` with `model` under `attention` and appends their records to the
    Best-of-N and long-CoT results files of this (model, policy); problems already in both are skipped. `bar`: a
    tqdm bar advanced by one per sample."""
    with contextlib.ExitStack() as stack:  # each results file is locked while this run writes it
        stores = {strategy: stack.enter_context(results.ResultsStore(
                      records_path(out_dir, name, attention, strategy),
                      _run_config(task, settings, attention, strategy, checkpoint)))
                  for strategy in scaling.STRATEGIES}
        _sample(model, tokenizer, name, task, attention, settings, stores, bar)


def _sample(model: Qwen3ForCausalLM, tokenizer: Tokenizer, name: str, task: Task, attention: AttentionConfig,
            settings: Settings, stores: dict[str, results.ResultsStore], bar: Any) -> None:
    n = settings.num_samples
    items = task.items(settings.problems)
    todo = [(i, item) for i, item in enumerate(items)
            if not all(store.done(item.id, s) for store in stores.values() for s in range(n))]
    if bar is not None:
        bar.update((len(items) - len(todo)) * n)
    for first in range(0, len(todo), settings.problems_per_batch):
        batch = todo[first:first + settings.problems_per_batch]
        prompts = [task.prompt_ids(item, tokenizer) for _, item in batch]
        result = generate(model, prompts, num_samples=n, max_new_tokens=task.max_new_tokens,
                          sampling=settings.sampling, attention=attention, seed=settings.seed,
                          eos_token_ids=tokenizer.eos_token_ids, vocab_size=tokenizer.vocab_size,
                          stream_ids=[i for i, _ in batch])
        for p, ((_, item), prompt) in enumerate(zip(batch, prompts)):
            rows = _records(item, len(prompt), result, p, task, tokenizer, model, name, task.truncation_budgets)
            for strategy, store in stores.items():
                store.append([r for r in rows if not store.done(item.id, r["sample_index"])])
        if bar is not None:
            bar.update(len(batch) * n)


@dataclasses.dataclass(frozen=True)
class Row:
    """One (model, policy) of the summary table, means over the problems: pass@k (k = 1, 2, 4, ... N), majority
    vote of the N answers, generated tokens per sample, truncation[b]: accuracy of a sample cut at b tokens (b =
    max_new_tokens: uncut), and cost_at[k]: {"flops", "eflops"} per problem of k samples (eFLOPs on the study's
    hardware)."""

    model: str
    params: int
    policy: str
    pass_at: dict[int, float]
    majority: float
    mean_length: float
    truncation: dict[int, float]
    cost_at: dict[int, dict[str, float]]

    @property
    def flops(self) -> float:
        return self.cost_at[max(self.cost_at)]["flops"]

    @property
    def eflops(self) -> float:
        return self.cost_at[max(self.cost_at)]["eflops"]


def _majority(answers: Sequence[str | None], gold: str) -> float:
    """1 if the most frequent (non-missing) answer is the gold one (ties share the credit), else 0."""
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    winners = [a for a, c in counts.items() if c == top]
    return winners.count(gold) / len(winners)


def summary_rows(records: Sequence[dict[str, Any]], hardware: str) -> list[Row]:
    """The summary table of a study's records (its Best-of-N runs), ordered by model size then policy."""
    best_of_n = [r for r in records if r["config"]["strategy"] == "best_of_n"]
    answers: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))  # (model, policy) -> problem -> its records
    for r in best_of_n:
        label = scaling.policy_label(scaling.attention_config(r["config"]["attention"]))
        answers[(r["model"], label)][r["problem_id"]].append(r)
    budgets = sorted({int(b) for r in records for b in r["config"]["truncation_budgets"]})
    rows = []
    for run in scaling.group_runs(best_of_n):
        points = scaling.best_of_n_points(run, hardware)
        samples = [s for ss in run.problems.values() for s in ss]
        truncation = {b: float(np.mean([s.correct if s.length <= b else s.truncation.get(b, False)
                                        for s in samples])) for b in budgets if b < run.max_new_tokens}
        truncation[run.max_new_tokens] = float(np.mean([s.correct for s in samples]))  # the whole chain
        rows.append(Row(model=run.model, params=run.config.num_params(), policy=run.policy,
                        pass_at={int(p.setting[2:]): float(p.metric.mean()) for p in points},
                        majority=float(np.mean([_majority([r["answer"] for r in rs], rs[0]["gold"])
                                                for rs in answers[(run.model, run.policy)].values()])),
                        mean_length=float(np.mean([s.length for s in samples])), truncation=truncation,
                        cost_at={int(p.setting[2:]): {"flops": float(p.flops.mean()),
                                                      "eflops": float(p.eflops.mean())} for p in points}))
    return sorted(rows, key=lambda r: (r.params, r.policy != "dense", r.policy))


def analyze(records: Sequence[dict[str, Any]], hardware: str, out_dir: str) -> dict[str, scaling.Analysis]:
    """The scaling analysis of each strategy (main frontier: dense; every policy gets its own frontier), its
    report written to <out_dir>/<strategy>/ (kinetics_jax/scaling/plots.py lists the files)."""
    analyses = {}
    for strategy in scaling.STRATEGIES:
        points = [p for run in scaling.group_runs([r for r in records if r["config"]["strategy"] == strategy])
                  for p in scaling.run_points(run, hardware)]
        if points:
            analyses[strategy] = scaling.analyze(points, policy="dense")
            scaling.write_report(analyses[strategy], os.path.join(out_dir, strategy))
    return analyses
