"""The study runner: each (model, attention policy) samples N chains per problem of a task once, and the same
samples are recorded twice, as a Best-of-N run (k of the N samples, k = 1, 2, 4, ...) and as a long-CoT run (each
sample cut at the truncation budgets), in the results format of kinetics_jax.eval.records (resumable: a killed
study continues where it stopped).

    task = study.ChaseTask()                                    # the embedded default (or study.MathTask(...))
    for name in ("tiny-s", "tiny-m", "tiny-l"):
        model, tokenizer = kj.load_checkpoint(name, dtype=jnp.float32), kj.Tokenizer.from_dir(name)
        for policy in ("dense", "block_topk-32"):
            study.run_config(model, tokenizer, name, task, kj.AttentionConfig.parse(policy), settings, out_dir, bar)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

from kinetics_jax import scaling
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.eval import results
from kinetics_jax.eval.records import sample_record
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.sampling import FinishedSample, SamplingConfig, generate
from kinetics_jax.study.tasks import Task
from kinetics_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Settings:
    """problems: how many; num_samples: N per problem; max_num_seqs and chunk_steps: the continuous engine's
    decode slots (every problem x sample of a configuration streams through them) and steps per compiled call;
    hardware: what eFLOPs are priced on."""

    problems: int = 64
    num_samples: int = 8
    max_num_seqs: int = 128
    chunk_steps: int = 16
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0
    hardware: str = "B200"

    def __post_init__(self) -> None:
        for name in ("problems", "num_samples", "max_num_seqs", "chunk_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"study setting {name} must be >= 1, got {getattr(self, name)}")


def _run_config(task: Task, settings: Settings, attention: AttentionConfig, strategy: str, checkpoint: str
                ) -> dict[str, Any]:
    return {"checkpoint": checkpoint, "dataset": task.name, "problems": settings.problems, "strategy": strategy,
            "num_samples": settings.num_samples, "max_new_tokens": task.max_new_tokens,
            "truncation_budgets": list(task.truncation_budgets) if strategy == "long_cot" else [],
            "attention": attention.to_fields(),
            "sampling": dataclasses.asdict(settings.sampling), "seed": settings.seed}


def records_path(out_dir: str, model: str, attention: AttentionConfig, strategy: str) -> str:
    """Where the records of one run live: <out_dir>/records/<model>.<policy>.<strategy>.jsonl."""
    return os.path.join(out_dir, "records", f"{model}.{attention.policy.label()}.{strategy}.jsonl")


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
    """Streams every (problem, sample) not yet in both stores through one continuous engine; each sample's
    record (graded by the task, truncated at its budgets, priced on the study's hardware in the model's dtype)
    is appended to the stores that lack it as soon as the sample finishes."""
    n = settings.num_samples
    items = task.items(settings.problems)
    done = {(i, s) for i, item in enumerate(items) for s in range(n)
            if all(store.done(item.id, s) for store in stores.values())}
    if bar is not None:
        bar.update(len(done))
    todo = [i for i in range(len(items)) if any((i, s) not in done for s in range(n))]
    if not todo:
        return
    prompts = [task.prompt_ids(items[i], tokenizer) for i in todo]

    def write(samples: list[FinishedSample]) -> None:
        rows = []
        for f in samples:
            item = items[todo[f.prompt]]
            rows.append((item.id, sample_record(
                f.tokens, f.finish_reason, sample_index=f.sample, num_samples=n, model=name, config=model.config,
                dataset=task.name, problem_id=item.id, gold=item.gold, prompt_length=len(prompts[f.prompt]),
                tokenizer=tokenizer, budgets=task.truncation_budgets, attention=attention,
                hardware=settings.hardware, dtype=model.dtype, grade=task.grade)))
        for store in stores.values():
            store.append([r for problem, r in rows if not store.done(problem, r["sample_index"])])
        if bar is not None:
            bar.update(len(samples))

    generate(model, prompts, num_samples=n, max_new_tokens=task.max_new_tokens, sampling=settings.sampling,
             attention=attention, seed=settings.seed, eos_token_ids=tokenizer.eos_token_ids,
             vocab_size=tokenizer.vocab_size, stream_ids=todo, max_num_seqs=settings.max_num_seqs,
             chunk_steps=settings.chunk_steps, skip={(j, s) for j, i in enumerate(todo) for s in range(n)
                                                     if (i, s) in done}, on_finish=write)
