"""The Kinetics study: models x attention policies x {Best-of-N, long CoT}, priced, and analyzed.

    task = study.ChaseTask()                                    # the embedded default (or study.MathTask(...))
    for name in ("tiny-s", "tiny-m", "tiny-l"):
        model, tokenizer = kj.load_checkpoint(name, dtype=jnp.float32), kj.Tokenizer.from_dir(name)
        for policy in ("dense", "block_topk-32"):
            study.run_config(model, tokenizer, name, task, kj.AttentionConfig.parse(policy), settings, out_dir, bar)
    records = results.read_records(paths)
    analyses, rows = study.analyze(records, "B200", out_dir), study.summary_rows(records, "B200")
    report.write(rows, analyses, out_dir, hardware="B200", intro="...")

Modules: `tasks` (what is evaluated: the Task protocol, ChaseTask, MathTask), `runner` (Settings, run_config,
records_path: sampling and recording), `summary` (the table rows and the scaling analysis of the
records), `report` (the study's table and figure). scripts/study.py is the job.
"""

from kinetics_jax.study.runner import Settings, records_path, run_config
from kinetics_jax.study.summary import Row, analyze, summary_rows
from kinetics_jax.study.tasks import ChaseTask, Item, MathTask, Task

__all__ = ["ChaseTask", "Item", "MathTask", "Row", "Settings", "Task", "analyze", "records_path",
           "run_config", "summary_rows"]
