"""The main job: the Kinetics study in miniature on the shipped tiny family, or at scale on real checkpoints.

    python scripts/study.py     # tiny-s/m/l x {dense, oracle top-k, block top-k} x {Best-of-N, long CoT}
    python scripts/study.py --problems=256 --num_samples=32 --policies=dense,topk-16,block_topk-64,block_topk-128
    python scripts/study.py --models=ckpt/qwen3-0.6b,ckpt/qwen3-1.7b --task=aime24 \
        --dataset_path=data/aime24.jsonl --num_samples=16 --dtype=bfloat16 --attention_backend=pallas \
        --policies=dense,block_topk-256 --temperature=0.6 --top_p=0.95 --top_k=20

For every model (a shipped name or a checkpoint directory, orbax or Hugging Face) and attention policy, it samples
--num_samples chains per problem once (all problems x samples of a configuration stream through one continuous
engine of --max_num_seqs slots) and records them twice: as a Best-of-N run (pass@k over k of the N
samples) and as a long-CoT run (each chain cut at the truncation budgets). Every record is priced with the
eFLOPs model; kinetics_jax.scaling turns them into frontiers under FLOPs and eFLOPs, the optimal model per budget
and dense vs sparse frontiers (--out_dir/<strategy>/), and the study writes its own table and figure
(--out_dir/summary.md, summary.csv, summary.json, study.png). Records go to --out_dir/records/ as they are made:
a killed study restarted with the same flags continues where it stopped.

The task "chase" is the tiny family's pointer chasing (kinetics_jax/tiny/task.py) on held-out problems; the math
tasks use the Kinetics prompt, the chat template (thinking on) and math-verify grading. Sampling defaults to
temperature 1 without truncation (at the Kinetics T 0.6 / top-p 0.95 the tiny models' chains are nearly
deterministic, and Best-of-N has nothing to choose from); give the Kinetics flags for real models.
"""

from __future__ import annotations

import os
import time

from absl import flags, logging

import jax.numpy as jnp
from tqdm import tqdm

import kinetics_jax as kj
from kinetics_jax import cli, cost, outputs, scaling, study
from kinetics_jax.checkpoint import shipped
from kinetics_jax.eval import datasets, results
from kinetics_jax.policies import flags as attention_flags
from kinetics_jax.sampling import flags as sampling_flags
from kinetics_jax.study import report

_MODELS = flags.DEFINE_list("models", list(shipped.SHIPPED), "Shipped names or checkpoint directories.")
_POLICIES = flags.DEFINE_list("policies", ["dense", "topk-32", "block_topk-64", "block_topk-96"],
                              "Attention policy labels: dense, block_topk-<tokens>, topk-<tokens> (the oracle), "
                              "sliding_window-<tokens>, with fields off their defaults after ':' (e.g. "
                              "block_topk-64:score=quest,block_size=8); sink 4, local 0 and layer 0 dense, as in "
                              "the paper. --attention_backend applies where the policy has it (the oracle topk "
                              "always runs in XLA).")
flags.register_validator("policies", attention_flags.label_list_ok)
attention_flags.define_run_flags()
_TASK = flags.DEFINE_enum("task", "chase", ("chase",) + datasets.DATASETS, "What the models are evaluated on.")
_DATASET_PATH = flags.DEFINE_string("dataset_path", None, "Local .jsonl / .parquet of a math --task.")
_PROBLEMS = flags.DEFINE_integer("problems", 64, "Problems per configuration.", lower_bound=1)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "Samples per problem (N).", lower_bound=1)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Generation budget per sample (default: the task's).",
                                lower_bound=1)
_BUDGETS = cli.define_int_list("truncation_budgets", None, "Long-CoT budgets in tokens (default: the task's).")
sampling_flags.define_flags()
sampling_flags.define_engine_flags()
flags.FLAGS.set_default("max_num_seqs", study.Settings.max_num_seqs)
flags.FLAGS.set_default("temperature", 1.0)
flags.FLAGS.set_default("top_p", 1.0)
flags.FLAGS.set_default("top_k", 0)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["bfloat16", "float32"], "Compute and parameter dtype.")
_HARDWARE = flags.DEFINE_enum("hardware", "B200", sorted(cost.HARDWARE), "Hardware eFLOPs are priced on.")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/study", "Output directory.")


def _task() -> study.Task:
    overrides = {}
    if _MAX_NEW.value is not None:
        overrides["max_new_tokens"] = _MAX_NEW.value
    if _BUDGETS.value is not None:
        overrides["truncation_budgets"] = tuple(sorted(set(cli.int_list(_BUDGETS))))
    if _TASK.value == "chase":
        if _DATASET_PATH.value:
            raise ValueError("--dataset_path is for the math tasks; the chase task generates its problems")
        return study.ChaseTask(**overrides)
    if not _DATASET_PATH.value:
        raise ValueError(f"--task={_TASK.value} needs --dataset_path (a local .jsonl or .parquet)")
    return study.MathTask(_DATASET_PATH.value, name=_TASK.value, **overrides)


def _policies() -> list[kj.AttentionConfig]:
    policies = []
    for label in _POLICIES.value:
        # A policy without the --attention_backend kernel (the oracle top-k scores every key) stays on XLA.
        backend = flags.FLAGS.attention_backend
        policies.append(attention_flags.config_from_flags(
            label, backend=backend if backend in kj.policies.parse_policy(label).backends else "xla"))
    if not policies:
        raise ValueError("--policies is empty")
    return policies


def _quietly(fn, *args, **kwargs):
    """fn(*args, **kwargs) with INFO logging off: orbax logs a dozen lines per restore into the progress bar."""
    level = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    try:
        return fn(*args, **kwargs)
    finally:
        logging.set_verbosity(level)


def main(argv: list[str]) -> int:
    del argv
    task = _task()
    policies = _policies()
    settings = study.Settings(problems=_PROBLEMS.value, num_samples=_NUM_SAMPLES.value,
                              **sampling_flags.engine_from_flags(), sampling=sampling_flags.config_from_flags(),
                              seed=_SEED.value, hardware=_HARDWARE.value)
    names = [os.path.basename(os.path.normpath(m)) for m in _MODELS.value]
    if len(set(names)) != len(names):
        raise ValueError(f"--models must have distinct directory names, got {names}")
    for path in _MODELS.value:  # every model's config (and tokenizer) is read before the first one runs
        kj.Qwen3Config.from_hf_config(shipped.resolve(path))
        kj.Tokenizer.from_dir(path)
    # --out_dir is checked and locked before any compute: a second study writing it is refused.
    with outputs.exclusive(_OUT_DIR.value, directory=True):
        _run(task, policies, settings, names)
    return 0


def _run(task: study.Task, policies: list[kj.AttentionConfig], settings: study.Settings, names: list[str]
         ) -> None:
    start = time.perf_counter()
    total = len(names) * len(policies) * settings.problems * settings.num_samples
    with tqdm(total=total, unit="sample", desc="study") as bar:
        for path, name in zip(_MODELS.value, names):
            model = _quietly(kj.load_model, path, dtype=jnp.dtype(_DTYPE.value))
            tokenizer = kj.Tokenizer.from_dir(path)
            for attention in policies:
                bar.set_postfix(model=name, policy=attention.policy.label())
                study.run_config(model, tokenizer, name, task, attention, settings, _OUT_DIR.value, bar,
                                 checkpoint=os.path.abspath(shipped.resolve(path)))
    paths = [study.records_path(_OUT_DIR.value, name, attention, strategy) for name in names
             for attention in policies for strategy in scaling.STRATEGIES]
    records = results.read_records(paths)
    analyses = study.analyze(records, _HARDWARE.value, _OUT_DIR.value)
    rows = study.summary_rows(records, _HARDWARE.value)
    intro = (f"{task.name}: {settings.problems} problems x {settings.num_samples} samples "
             f"(T {settings.sampling.temperature}), {len(names)} models, {len(policies)} attention policies, "
             f"priced on {_HARDWARE.value}")
    written = report.write(rows, analyses, _OUT_DIR.value, hardware=_HARDWARE.value, intro=intro)
    print("\n" + report.markdown(rows, analyses, intro))
    logging.info("study done in %.0f s; wrote %s and the scaling reports in %s/{%s}", time.perf_counter() - start,
                 ", ".join(os.path.basename(p) for p in written), _OUT_DIR.value, ",".join(analyses))


if __name__ == "__main__":
    cli.run(main)
