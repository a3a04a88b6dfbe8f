"""Evaluates a checkpoint on a math dataset: samples, grades, truncation curves, cost counters; resumable.

    python scripts/evaluate.py --checkpoint=ckpt/qwen3-0.6b --dataset=aime24 --dataset_path=data/aime24.jsonl \
        --num_samples=32 --max_new_tokens=32768 --output=runs/aime24-0.6b.jsonl \
        [--attention=block_topk-1024 --attention_backend=pallas]

Each problem is wrapped in the Kinetics prompt and the model's chat template (thinking on), sampled N times
(Kinetics defaults: T 0.6, top-p 0.95, top-k 20), graded (math-verify), re-graded at every --truncation_budgets
token budget, and priced with the eFLOPs model. All problems x samples stream through one continuous engine
(--max_num_seqs decode slots, refilled as samples finish; no per-batch barrier), and each sample's record is
appended to --output as soon as it finishes (see kinetics_jax/eval/records.py). Killed and restarted with the
same flags, it continues where it stopped: records already written are kept, their (problem, sample) pairs are
not decoded again, and a torn last line is repaired. A sample does not depend on the slot, neighbours or order
it was decoded in (its PRNG stream is its problem's index in the dataset), so a resumed run writes the records
an uninterrupted one would. At the end it prints and writes (<output>.summary.json) pass@k, maj@N,
accuracy, mean length and eFLOPs per problem, and a per-problem table (<output>.per_query.csv).

On a pod every process runs the same command (with --mesh_shape, and --coordinator_address / --num_processes /
--process_id for an explicit start): all decode together, process 0 grades and writes, so the records are
those of a single-host run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os

from absl import flags, logging

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import kinetics_jax as kj
from kinetics_jax import cli, cost, outputs
from kinetics_jax.policies import flags as attention_flags
from kinetics_jax.sampling import engine
from kinetics_jax.sampling import flags as sampling_flags
from kinetics_jax.sharding import flags as sharding_flags
from kinetics_jax.checkpoint import shipped
from kinetics_jax.eval import datasets, metrics, results
from kinetics_jax.eval.records import sample_record

EMBEDDED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kinetics_jax", "assets",
                        "tiny-random-qwen3")

_CHECKPOINT = flags.DEFINE_string("checkpoint", EMBEDDED, "orbax checkpoint or Hugging Face directory.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "Name in the records (default: the checkpoint's).")
_DATASET = flags.DEFINE_enum("dataset", "aime24", datasets.DATASETS, "Dataset (its field names).")
_DATASET_PATH = flags.DEFINE_string("dataset_path", None, "Local .jsonl or .parquet of the dataset.")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate the first N problems only.", lower_bound=1)
_STRATEGY = flags.DEFINE_enum("strategy", "best_of_n", ["best_of_n", "long_cot"],
                              "best_of_n: N samples; long_cot: N chains with the repetition stop.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "Samples per problem (N).", lower_bound=1)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 4096, "Generation budget per sample.", lower_bound=1)
_BUDGETS = cli.define_int_list("truncation_budgets", None, "Token budgets at which traces are re-graded "
                               "(default: 2048, 4096, ... below --max_new_tokens).")
_SKIP_OVERLONG = flags.DEFINE_bool("skip_overlong", False, "Skip (and list in the summary) the problems whose prompt "
                                   "+ --max_new_tokens exceed the model's context, instead of refusing the run.")
sampling_flags.define_flags()
sampling_flags.define_engine_flags()
_THINKING = flags.DEFINE_bool("enable_thinking", True, "Qwen3 thinking mode in the chat template.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute and parameter dtype.")
_HARDWARE = flags.DEFINE_enum("hardware", "B200", sorted(cost.HARDWARE), "Hardware the costs are priced on.")
_OUTPUT = flags.DEFINE_string("output", "runs/eval.jsonl", "Results jsonl (appended; resumable).")
attention_flags.define_flags()
sharding_flags.define_flags()


def _budgets() -> list[int]:
    if _BUDGETS.value is not None:
        return sorted(set(cli.int_list(_BUDGETS)))
    return [b for b in (2048 * 2 ** i for i in range(16)) if b < _MAX_NEW.value]


def _run_config(attention: kj.AttentionConfig, sampling: kj.SamplingConfig, budgets: list[int]) -> dict:
    return {"checkpoint": os.path.abspath(_CHECKPOINT.value), "dataset": _DATASET.value,
            "dataset_path": os.path.abspath(_DATASET_PATH.value), "limit": _LIMIT.value,
            "strategy": _STRATEGY.value, "num_samples": _NUM_SAMPLES.value, "max_new_tokens": _MAX_NEW.value,
            "truncation_budgets": budgets, "attention": attention.to_fields(),
            "sampling": dataclasses.asdict(sampling), "seed": _SEED.value, "dtype": _DTYPE.value,
            "enable_thinking": _THINKING.value, "hardware": _HARDWARE.value}


def _summary(records: list[dict], model: kj.Qwen3ForCausalLM, attention: kj.AttentionConfig) -> dict:
    """pass@k (k = 1, 2, 4, .. N), maj@N, accuracy, mean length and eFLOPs per problem (Best-of-N accounting)."""
    by_problem: dict[str, list[dict]] = {}
    for r in records:
        by_problem.setdefault(r["problem_id"], []).append(r)
    n = _NUM_SAMPLES.value
    ks = [k for k in (2 ** i for i in range(16)) if k <= n]
    passes = {k: [] for k in ks}
    majority, eflops = [], []
    for rows in by_problem.values():
        correct = sum(r["correct"] for r in rows)
        for k in ks:
            passes[k].append(metrics.pass_at_k(len(rows), correct, k))
        majority.append(metrics.majority_vote([r["answer"] for r in rows], rows[0]["gold"], len(rows)))
        eflops.append(cost.tts_cost(model.config, prompt_len=rows[0]["prompt_length"],
                                    gen_lens=[r["length"] for r in rows], num_samples=len(rows),
                                    attention=attention, hardware=_HARDWARE.value, dtype=_DTYPE.value).eflops)
    return {"problems": len(by_problem), "samples": len(records),
            "accuracy": float(np.mean([r["correct"] for r in records])),
            **{f"pass@{k}": float(np.mean(v)) for k, v in passes.items()},
            f"maj@{n}": float(np.mean(majority)), "mean_length": float(np.mean([r["length"] for r in records])),
            "eflops_per_problem": float(np.mean(eflops)), "hardware": _HARDWARE.value}


def _write_csv(path: str, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with outputs.replacing(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _write_json(path: str, data: dict) -> None:
    with outputs.replacing(path) as f:
        json.dump(data, f, indent=2)


def _fitting(problems: list[datasets.Problem], prompts: list[list[int]], max_position_embeddings: int
             ) -> tuple[list[int], list[str]]:
    """The indices of the problems whose prompt + --max_new_tokens fit the model's context, and the ids of the
    others; without --skip_overlong the first of those is refused, naming it (before any compute)."""
    keep, skipped = [], []
    for i, (problem, prompt) in enumerate(zip(problems, prompts)):
        if len(prompt) + _MAX_NEW.value <= max_position_embeddings:
            keep.append(i)
            continue
        why = (f"problem {problem.id!r}: its prompt ({len(prompt)} tokens) + --max_new_tokens ({_MAX_NEW.value}) "
               f"exceeds the model's max_position_embeddings ({max_position_embeddings})")
        if not _SKIP_OVERLONG.value:
            raise ValueError(why + "; lower --max_new_tokens or pass --skip_overlong")
        logging.warning("skipping %s", why)
        skipped.append(problem.id)
    return keep, skipped


def main(argv: list[str]) -> int:
    del argv
    mesh = sharding_flags.mesh_from_flags()
    if not _DATASET_PATH.value:
        raise ValueError("give --dataset_path (a local .jsonl or .parquet of the dataset)")
    sampling = sampling_flags.config_from_flags()
    attention = attention_flags.config_from_flags()
    budgets = _budgets()
    problems = datasets.load_problems(_DATASET_PATH.value, _DATASET.value)[:_LIMIT.value]
    # Every problem is checked against the context before the weights are loaded.
    tokenizer = kj.Tokenizer.from_dir(_CHECKPOINT.value)
    config = kj.Qwen3Config.from_hf_config(shipped.resolve(_CHECKPOINT.value))
    prompts = [datasets.prompt_ids(p, tokenizer, enable_thinking=_THINKING.value) for p in problems]
    keep, skipped = _fitting(problems, prompts, config.max_position_embeddings)
    # Process 0 owns the results file (locked while it runs); the others learn from it which problems are left.
    writer = kj.sharding.is_writer()
    with (results.ResultsStore(_OUTPUT.value, _run_config(attention, sampling, budgets)) if writer
          else contextlib.nullcontext()) as store:
        model = kj.load_model(_CHECKPOINT.value, dtype=jnp.dtype(_DTYPE.value), mesh=mesh)
        name = _MODEL_NAME.value or os.path.basename(os.path.normpath(_CHECKPOINT.value))
        n = _NUM_SAMPLES.value
        # Which (problem, sample) pairs the results file holds; every process must run the same request.
        held = np.asarray([[writer and store.done(problems[i].id, s) for s in range(n)] for i in keep],
                          bool).reshape(len(keep), n)
        held = kj.sharding.broadcast(held)
        todo = [(i, row) for i, row in zip(keep, held) if not row.all()]
        logging.info("%d problems, %d already done, %d to go, %d skipped; writing %s", len(problems),
                     len(keep) - len(todo), len(todo), len(skipped), _OUTPUT.value)
        request = dict(prompts=[prompts[i] for i, _ in todo], num_samples=n, max_new_tokens=_MAX_NEW.value,
                       attention=attention, seed=_SEED.value, eos_token_ids=tokenizer.eos_token_ids,
                       vocab_size=tokenizer.vocab_size, stream_ids=[i for i, _ in todo], mesh=mesh,
                       skip={(j, s) for j, (_, row) in enumerate(todo) for s in range(n) if row[s]},
                       **sampling_flags.engine_from_flags())
        done = store.records if writer else []
        bar = tqdm(total=len(keep) * n, initial=len(done), unit="sample", desc=f"{name} {_DATASET.value}",
                   disable=not writer)
        correct = sum(r["correct"] for r in done)

        def write(samples: list[kj.FinishedSample]) -> None:
            """Records the samples that just finished (process 0)."""
            nonlocal correct
            if not writer:
                return
            new = []
            for f in samples:
                problem = problems[todo[f.prompt][0]]
                new.append(sample_record(
                    f.tokens, f.finish_reason, sample_index=f.sample, num_samples=n, model=name,
                    config=model.config, dataset=problem.dataset, problem_id=problem.id, gold=problem.answer,
                    prompt_length=len(prompts[todo[f.prompt][0]]), tokenizer=tokenizer, budgets=budgets,
                    attention=attention, hardware=_HARDWARE.value, dtype=_DTYPE.value))
            store.append(new)
            correct += sum(r["correct"] for r in new)
            bar.update(len(new))
            bar.set_postfix(accuracy=f"{correct / max(bar.n, 1):.3f}")

        if todo:
            engine.check(model, **request)  # before any compute
            kj.generate(model, **request, sampling=sampling, on_finish=write,
                        repetition=kj.RepetitionStop() if _STRATEGY.value == "long_cot" else None)
        bar.close()
        if not writer:
            return 0
        # The file holds records in the order samples finished; the summary reads them in dataset order, so that
        # it does not depend on the engine's schedule (slots, mesh).
        position = {problem.id: i for i, problem in enumerate(problems)}
        ordered = sorted(store.records, key=lambda r: (position.get(r["problem_id"], len(problems)),
                                                       r["sample_index"]))
        summary = {**_summary(ordered, model, attention), "skipped_problems": skipped}
        _write_json(_OUTPUT.value + ".summary.json", summary)
        _write_csv(_OUTPUT.value + ".per_query.csv", metrics.per_query_table(ordered))
    print(f"\n{name} on {_DATASET.value} ({summary['problems']} problems x {n} samples, {_STRATEGY.value}, "
          f"{attention.describe()}):")
    for key, value in summary.items():
        print(f"  {key:<20} {value:.6g}" if isinstance(value, float) else f"  {key:<20} {value}")
    return 0


if __name__ == "__main__":
    cli.run(main)
