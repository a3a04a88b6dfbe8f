"""The main job (scripts/study.py, kinetics_jax.study): policies, records, resuming, the summary table
checked against an independent count, and the script end to end at a reduced size on a shipped checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import kinetics_jax as kj
from kinetics_jax import scaling
from kinetics_jax.eval import results
from kinetics_jax import study
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.study import runner, summary
from kinetics_jax.tiny import task, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "study.py")


def test_majority_vote_of_answers():
    assert summary._majority(["v1 v2", "v1 v2", "v3 v4"], "v1 v2") == 1.0
    assert summary._majority(["v1 v2", "v3 v4"], "v1 v2") == 0.5  # a tie shares the credit
    assert summary._majority([None, None, "v3 v4"], "v1 v2") == 0.0
    assert summary._majority([None], "v1 v2") == 0.0


def test_chase_task_prompts_and_grading():
    chase = study.ChaseTask()
    items = chase.items(3)
    problem = task.make_problem(chase.seed, 1)
    assert items[1] == study.Item(problem.id, problem.prompt(), problem.answer)
    assert chase.grade(problem.solution(), problem.answer) == (problem.answer, True)
    assert chase.grade("1 v2 w3 ; answer v9 v8", problem.answer)[1] is (problem.answer == "v9 v8")
    assert chase.grade("1 v2 w3 ;", problem.answer) == (None, False)
    assert chase.max_new_tokens >= len(task.encode(problem.solution()))


@pytest.fixture(scope="module")
def random_chase_model(tmp_path_factory):
    """An untrained tiny-s in the chase vocabulary, saved with the task's tokenizer."""
    path = str(tmp_path_factory.mktemp("chase") / "rand-s")
    state = train.TrainState.create(train.FAMILY["tiny-s"], train.TrainConfig())
    kj.save_checkpoint(state.model(), path)
    task.write_tokenizer(path)
    return path


def test_run_config_records_both_strategies_and_resumes(random_chase_model, tmp_path, monkeypatch):
    model = kj.load_model(random_chase_model, dtype=jnp.float32)
    tokenizer = kj.Tokenizer.from_dir(random_chase_model)
    chase = study.ChaseTask(truncation_budgets=(8, 16))
    settings = study.Settings(problems=3, num_samples=2, max_num_seqs=2)
    attention = AttentionConfig.parse("block_topk-32")
    out = str(tmp_path)
    study.run_config(model, tokenizer, "rand-s", chase, attention, settings, out)
    for strategy in scaling.STRATEGIES:
        records = results.read_records(study.records_path(out, "rand-s", attention, strategy))
        assert len(records) == 6 and {r["config"]["strategy"] for r in records} == {strategy}
        for r in records:
            assert r["length"] == len(r["token_ids"]) >= 1
            assert set(r["truncation"]) == {str(b) for b in (8, 16) if b < r["length"]}
            assert r["cost"]["hardware"] == "B200" and r["cost"]["eflops"] > r["cost"]["compute_flops"] > 0
    # A run killed after some samples (their records written as they finished) resumes with the rest only: the
    # finished (problem, sample) pairs are skipped, and the records equal the uninterrupted run's.
    full = {s: results.read_records(study.records_path(out, "rand-s", attention, s)) for s in scaling.STRATEGIES}
    for strategy in scaling.STRATEGIES:
        path = study.records_path(out, "rand-s", attention, strategy)
        lines = open(path).read().splitlines(keepends=True)
        open(path, "w").writelines(lines[:4 if strategy == "best_of_n" else 3])
    skips = []
    real = runner.generate
    monkeypatch.setattr(runner, "generate", lambda m, prompts, **k: skips.append((len(prompts), k["skip"]))
                        or real(m, prompts, **k))
    study.run_config(model, tokenizer, "rand-s", chase, attention, settings, out)
    assert len(skips) == 1 and skips[0][0] * 2 - len(skips[0][1]) == 3  # what both stores hold is not decoded
    key = lambda r: (r["problem_id"], r["sample_index"])
    for strategy in scaling.STRATEGIES:
        again = results.read_records(study.records_path(out, "rand-s", attention, strategy))
        assert sorted(again, key=key) == sorted(full[strategy], key=key)
    # A second call finds every problem done and decodes nothing.
    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("resumed study decoded again"))
    study.run_config(model, tokenizer, "rand-s", chase, attention, settings, out)
    # Different settings on the same files are refused rather than mixed.
    with pytest.raises(ValueError, match="another run configuration"):
        study.run_config(model, tokenizer, "rand-s", chase, attention, study.Settings(problems=3, num_samples=4),
                         out)


def _record(model, config, problem, sample, length, correct, answer, truncation, strategy="best_of_n"):
    return {"model": model, "model_config": config.to_hf_dict(), "dataset": "chase", "problem_id": problem,
            "gold": "v1 v2", "sample_index": sample, "prompt_length": task.PROMPT_TOKENS, "length": length,
            "correct": correct, "answer": answer, "truncation": {str(b): v for b, v in truncation.items()},
            "config": {"strategy": strategy, "max_new_tokens": 128, "truncation_budgets": [64, 112],
                       "attention": {"kind": "dense", "sink": 4, "local": 0, "topk": None, "block_size": 16,
                                     "block_topk": None, "score": None, "dense_layers": [], "backend": "xla"}}}


def test_summary_rows_match_a_hand_count():
    config = train.FAMILY["tiny-s"]
    # Problem a: samples correct, wrong, correct, wrong; b: all wrong. Lengths 120 and 60 (the 60-token sample
    # ended before budget 64 and 112, so it is graded whole there).
    rows_in = []
    for s, (correct, length) in enumerate([(True, 120), (False, 120), (True, 60), (False, 120)]):
        rows_in.append(_record("tiny-s", config, "a", s, length, correct, "v1 v2" if correct else "v5 v6",
                               {64: False, 112: False} if length > 112 else {}))
    for s in range(4):
        rows_in.append(_record("tiny-s", config, "b", s, 120, False, None, {64: False, 112: False}))
    [row] = study.summary_rows(rows_in, "B200")
    # pass@k = 1 - C(n - c, k) / C(n, k), averaged over the two problems (b contributes 0).
    for k in (1, 2, 4):
        assert row.pass_at[k] == pytest.approx((1 - math.comb(2, k) / math.comb(4, k)) / 2)
    assert row.majority == pytest.approx(0.5 / 2)  # a: tie between v1 v2 and v5 v6; b: no answer
    assert row.mean_length == pytest.approx((120 * 7 + 60) / 8)
    # At 64 and 112 tokens only the 60-token sample (correct) counts: 1 of 8 samples.
    assert row.truncation == {64: pytest.approx(1 / 8), 112: pytest.approx(1 / 8), 128: pytest.approx(2 / 8)}
    assert row.cost_at[1]["flops"] < row.cost_at[2]["flops"] < row.cost_at[4]["flops"] == row.flops
    rows_in[1]["truncation"] = {}  # a 120-token sample that does not say how it reads cut at 64: refused
    with pytest.raises(ValueError, match="budget 64"):
        study.summary_rows(rows_in, "B200")


def _study(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, f"--out_dir={tmp_path}", *flags], capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))


def test_study_script_end_to_end_on_a_shipped_model(tmp_path):
    done = _study(tmp_path, "--models=tiny-s", "--policies=dense,block_topk-32", "--problems=4",
                  "--num_samples=2", "--max_num_seqs=4")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("study.png", "summary.md", "summary.csv", "summary.json", "best_of_n/frontier.png",
                 "best_of_n/policies.png", "long_cot/frontier.png", "long_cot/summary.json"):
        assert os.path.getsize(tmp_path / name) > 0, name
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["model"], r["policy"]) for r in rows] == [("tiny-s", "dense"), ("tiny-s", "block_topk-32")]
    records = results.read_records([str(p) for p in (tmp_path / "records").iterdir()])
    assert len(records) == 2 * 2 * 4 * 2  # policies x strategies x problems x samples
    for row in rows:  # the table's pass@1 is the fraction of correct records of its Best-of-N run
        mine = [r["correct"] for r in records if r["config"]["strategy"] == "best_of_n"
                and AttentionConfig.from_fields(r["config"]["attention"]).policy.label() == row["policy"]]
        assert row["pass_at"]["1"] == pytest.approx(np.mean(mine))
    assert "| tiny-s | 0.11M | dense |" in done.stdout
