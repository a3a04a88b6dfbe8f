"""kinetics_jax.scaling (points, optima, curves, frontier, costlier, isocost, analysis) on synthetic results whose
optimum is known by construction.

The disagreement case (long-CoT, 4 problems, 1 sample each, prompt 100 tokens):
  small = Qwen3-0.6B, every trace runs 8192 tokens, right on problems 0-2 only at the full length;
  big   = Qwen3-8B,   every trace stops after 2048 tokens, right on all 4 problems at every budget.
So small reaches 0.75 at cost(0.6B, 8192) and big reaches 1.0 at cost(8B, 2048). Under FLOPs the small model's
8192 tokens are cheaper than the big one's 2048 (parameters dominate); under eFLOPs they are ~10x dearer (KV reads
dominate). The FLOPs frontier therefore picks small, then big; the eFLOPs frontier picks big everywhere; and for
every accuracy level up to 0.75 the FLOPs-guided choice costs exactly eflops(0.6B, 8192) / eflops(8B, 2048)
times the eFLOPs optimum (1 above 0.75, where both pick big).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kinetics_jax import Qwen3Config
from kinetics_jax.cost import paper_params, tts_cost
from kinetics_jax.eval import results
from kinetics_jax import scaling
from kinetics_jax.scaling import runs
from kinetics_jax.policies import AttentionConfig, BlockTopK

SMALL, BIG = Qwen3Config.preset("qwen3-0.6b"), Qwen3Config.preset("qwen3-8b")
DENSE = AttentionConfig()
SPARSE = AttentionConfig(BlockTopK(block_size=16, block_topk=16))
PROMPT = 100


def _attention_dict(attention: AttentionConfig) -> dict:
    return attention.to_fields()


def _record(model: str, config: Qwen3Config, strategy: str, problem: int, sample: int, length: int, correct: bool,
            truncation: dict[int, bool], *, n: int, max_new_tokens: int, attention: AttentionConfig = DENSE,
            prompt: int = PROMPT) -> dict:
    return {"model": model, "model_config": config.to_hf_dict(), "dataset": "synthetic", "problem_id": f"p{problem}",
            "sample_index": sample, "num_samples": n, "prompt_length": prompt, "length": length,
            "finish_reason": "length" if length == max_new_tokens else "stop", "correct": correct,
            "answer": "1" if correct else "0", "gold": "1", "text": "...",
            "truncation": {str(b): v for b, v in truncation.items()},
            "config": {"strategy": strategy, "max_new_tokens": max_new_tokens, "attention": _attention_dict(attention),
                       "sampling": {"temperature": 0.6, "top_p": 0.95}, "seed": 0, "checkpoint": model}}


def disagreement_records(attention: AttentionConfig = DENSE, small_only: bool = False) -> list[dict]:
    records = [_record("small", SMALL, "long_cot", q, 0, 8192, q < 3, {2048: False, 4096: False}, n=1,
                       max_new_tokens=8192, attention=attention) for q in range(4)]
    if not small_only:
        records += [_record("big", BIG, "long_cot", q, 0, 2048, True, {2048: True, 4096: True}, n=1,
                            max_new_tokens=8192) for q in range(4)]
    return records


def agreement_records() -> list[dict]:
    """Best-of-N: small (4 samples of 256 tokens; 1 right on p0, none on p1) is the cheaper model up to accuracy
    0.5 under both cost models; big (2 samples of 1024 tokens, all right) above it."""
    records = [_record("small", SMALL, "best_of_n", q, s, 256, q == 0 and s == 0, {}, n=4, max_new_tokens=256)
               for q in range(2) for s in range(4)]
    records += [_record("big", BIG, "best_of_n", q, s, 1024, True, {}, n=2, max_new_tokens=1024)
                for q in range(2) for s in range(2)]
    return records


def _points(records: list[dict]) -> list[scaling.ConfigPoints]:
    return scaling.align_queries([p for run in runs.group_runs(records) for p in scaling.run_points(run, "B200")])


def _cost(config: Qwen3Config, length: int, n: int = 1, attention: AttentionConfig = DENSE):
    return tts_cost(config, prompt_len=PROMPT, gen_lens=length, num_samples=n, attention=attention, hardware="B200")


def _model(points: list[scaling.ConfigPoints], name: str) -> list[scaling.ConfigPoints]:
    return [p for p in points if p.model == name]


# ------------------------------------------------------------------------------------------------ records, points
def test_read_records_skips_blank_lines_and_a_torn_tail_and_keeps_extra_fields(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [json.dumps({**r, "extra": [1, 2]}) for r in disagreement_records()]
    path.write_text("\n".join(lines) + "\n\n" + lines[0][:40])
    records = results.read_records([str(path)])
    assert len(records) == 8 and records[0]["extra"] == [1, 2]
    path.write_text("not json\n" + lines[0] + "\n")
    with pytest.raises(ValueError, match="r.jsonl:1"):
        results.read_records(str(path))


def test_runs_group_by_model_dataset_and_config():
    grouped = runs.group_runs(disagreement_records() + disagreement_records(SPARSE, small_only=True))
    assert sorted((r.model, r.policy) for r in grouped) == [("big", "dense"), ("small", "block_topk-256"),
                                                            ("small", "dense")]
    run = next(r for r in grouped if r.policy == "block_topk-256")
    assert run.config == SMALL and run.attention == SPARSE and run.max_new_tokens == 8192
    assert list(run.problems) == ["p0", "p1", "p2", "p3"] and run.problems["p0"][0].truncation == {2048: False,
                                                                                                   4096: False}
    duplicate = disagreement_records()[:1] * 2
    with pytest.raises(ValueError, match="twice"):
        runs.group_runs(duplicate)


def test_long_cot_points_truncate_the_traces_at_each_budget():
    points = _points(disagreement_records())
    small = _model(points, "small")
    assert [p.label for p in small] == ["B=2048", "B=4096", "B=8192"]
    assert [(p.budget, p.samples) for p in small] == [(2048, None), (4096, None), (8192, None)]
    assert [p.gen_tokens for p in small] == [2048, 4096, 8192]
    np.testing.assert_array_equal(small[0].metric, [0, 0, 0, 0])
    np.testing.assert_array_equal(small[2].metric, [1, 1, 1, 0])
    for p, budget in zip(small, (2048, 4096, 8192)):
        expected = _cost(SMALL, budget)
        np.testing.assert_allclose(p.flops, expected.compute_flops, rtol=1e-12)
        np.testing.assert_allclose(p.eflops, expected.eflops, rtol=1e-12)
    big = _model(points, "big")  # 2048-token traces: every budget costs (and scores) the same
    for p in big:
        np.testing.assert_array_equal(p.metric, 1.0)
        np.testing.assert_allclose(p.eflops, _cost(BIG, 2048).eflops, rtol=1e-12)


def test_budgets_come_from_the_run_config_and_the_records():
    records = disagreement_records()
    for r in records:
        r["config"]["truncation_budgets"] = [1024, 2048, 4096]  # scripts/evaluate.py records them here,
        truncation = {**r["truncation"], "1024": r["model"] == "big"}
        r["truncation"] = {b: v for b, v in truncation.items() if int(b) < r["length"]}  # and cuts longer traces only
    points = _points(records)
    big, small = _model(points, "big"), _model(points, "small")
    assert [p.label for p in big] == ["B=1024", "B=2048", "B=4096", "B=8192"]  # 2048, 4096: in no big record
    assert [p.metric.mean() for p in big] == [1.0, 1.0, 1.0, 1.0]
    assert [p.metric.mean() for p in small] == [0.0, 0.0, 0.0, 0.75]
    np.testing.assert_allclose(big[0].eflops, _cost(BIG, 1024).eflops, rtol=1e-12)
    np.testing.assert_allclose(big[2].eflops, _cost(BIG, 2048).eflops, rtol=1e-12)


def test_a_missing_truncation_entry_is_inferred_only_for_a_finished_trace():
    records = disagreement_records()
    records[4]["truncation"] = {"4096": True}  # big, 2048 tokens: correct at 2048 whatever the cut
    assert [p.metric[0] for p in _model(_points(records), "big")] == [1.0, 1.0, 1.0]
    records[5]["truncation"] = {"2048": False}  # an entry at the trace's end is not read: its final grade counts
    assert [p.metric[1] for p in _model(_points(records), "big")] == [1.0, 1.0, 1.0]
    records[0]["truncation"] = {"4096": False}  # small, 8192 tokens: the 2048 cut is unknown
    with pytest.raises(ValueError, match="budget 2048"):
        _points(records)


def test_best_of_n_points_price_each_sample_length_with_k_trials():
    records = agreement_records()
    records[0]["length"], records[1]["length"] = 100, 300  # p0 samples: 100, 300, 256, 256 tokens
    small = _model(_points(records), "small")
    assert [p.samples for p in small] == [1, 2, 4] and [p.label for p in small] == ["k=1", "k=2", "k=4"]
    assert [p.gen_tokens for p in small] == [256, 512, 1024]
    np.testing.assert_allclose([p.metric[0] for p in small], [0.25, 0.5, 1.0])
    for p, k in zip(small, (1, 2, 4)):
        expected = np.mean([_cost(SMALL, length, k).eflops for length in (100, 300, 256, 256)])
        assert p.eflops[0] == pytest.approx(expected, rel=1e-12)
        assert p.flops[1] == pytest.approx(_cost(SMALL, 256, k).compute_flops, rel=1e-12)


# ------------------------------------------------------------------------------------------------ the rule
def test_query_optimum_takes_each_querys_best_affordable_configuration():
    small = _model(_points(disagreement_records()), "small")
    full = _cost(SMALL, 8192).compute_flops
    np.testing.assert_array_equal(scaling.query_optimum(small, full, "flops"), [1, 1, 1, 0])
    np.testing.assert_array_equal(scaling.query_optimum(small, full * 0.999, "flops"), [0, 0, 0, 0])
    np.testing.assert_array_equal(scaling.query_choice(small, full, "flops"), [2, 2, 2, -1])
    # a query takes its own best: make p3 right at 2048 tokens only
    small[0].metric[3] = 1.0
    np.testing.assert_array_equal(scaling.query_optimum(small, _cost(SMALL, 2048).compute_flops, "flops"), [0, 0, 0, 1])
    np.testing.assert_array_equal(scaling.query_choice(small, full, "flops"), [2, 2, 2, 0])


def test_budget_curve_is_the_mean_of_the_per_query_optimum():
    rng = np.random.default_rng(0)
    for trial in range(20):
        configs, queries = rng.integers(1, 6), rng.integers(1, 8)
        points = [scaling.ConfigPoints(model="m", params=1, dataset="d", strategy="long_cot", policy="dense",
                                  budget=c + 1, gen_tokens=c, hardware="B200",
                                  queries=tuple(f"q{i}" for i in range(queries)),
                                  metric=rng.choice([0.0, 0.25, 0.5, 1.0], queries),
                                  flops=rng.choice([1.0, 2.0, 5.0, 10.0], queries), eflops=np.ones(queries))
                  for c in range(configs)]
        curve = scaling.budget_curve(points, "flops")
        for budget in (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 11.0):
            assert curve(budget) == pytest.approx(scaling.query_optimum(points, budget, "flops").mean(), abs=1e-12)


def test_smooth3_is_a_centered_moving_average_kept_monotone():
    np.testing.assert_allclose(scaling.smooth3(np.array([0.0, 0.0, 3.0, 3.0])), [0, 1, 2, 3])
    np.testing.assert_allclose(scaling.smooth3(np.array([[1.0, 4.0]])), [[2.5, 2.5]])
    rng = np.random.default_rng(1)
    curve = np.cumsum(rng.random((3, 50)), axis=1)
    assert np.all(np.diff(scaling.smooth3(curve), axis=1) >= 0)


def test_cost_grid_spans_the_costs_with_two_points_beyond_each_end():
    points = _points(disagreement_records())
    grid = scaling.cost_grid(points, "eflops", 20)
    costs = np.concatenate([p.eflops for p in points])
    assert grid[2] == costs.min() and grid[-3] == costs.max()  # exactly: the dearest configuration fits there
    np.testing.assert_allclose(grid[1:] / grid[:-1], grid[1] / grid[0])


# ------------------------------------------------------------------------------------------------ frontiers
def test_flops_and_eflops_pick_different_models():
    points = _points(disagreement_records())
    small_f, big_f = _cost(SMALL, 8192), _cost(BIG, 2048)
    assert small_f.compute_flops < big_f.compute_flops and small_f.eflops > 5 * big_f.eflops  # the premise

    flops = scaling.pareto_frontier(points, "flops", scaling.cost_grid(points, "flops", 200))
    eflops = scaling.pareto_frontier(points, "eflops", scaling.cost_grid(points, "eflops", 200))
    for f in (flops, eflops):
        assert f.models == ("small", "big")
        for curve in (*f.raw, *f.smoothed, f.accuracy):
            assert np.all(np.diff(curve) >= 0)
        assert f.accuracy[-1] == 1.0 and f.optimal[-1] == "big" and f.optimal[0] is None
    # exact (raw) curves: the rule at each budget
    np.testing.assert_array_equal(flops.raw[0], np.where(flops.grid >= small_f.compute_flops, 0.75, 0.0))
    np.testing.assert_array_equal(flops.raw[1], np.where(flops.grid >= big_f.compute_flops, 1.0, 0.0))
    # FLOPs: small between its price and big's, then big; eFLOPs: big wherever anything is affordable
    between = np.sqrt(small_f.compute_flops * big_f.compute_flops)
    assert flops.optimal[int(np.searchsorted(flops.grid, between))] == "small"
    assert {m for m in flops.optimal if m} == {"small", "big"}
    assert {m for m in eflops.optimal if m} == {"big"}
    assert [s[0] for s in flops.segments()] == ["small", "big"] and [s[0] for s in eflops.segments()] == ["big"]


def test_costlier_ratio_is_the_eflops_price_of_the_flops_choice():
    points = _points(disagreement_records())
    ratio = scaling.costlier_ratio(points, levels=50)
    expected = _cost(SMALL, 8192).eflops / _cost(BIG, 2048).eflops
    np.testing.assert_allclose(ratio.levels, np.arange(1, 51) / 50)
    low = ratio.levels <= 0.75
    assert ratio.flops_model == ("small",) * 37 + ("big",) * 13 and set(ratio.eflops_model) == {"big"}
    np.testing.assert_allclose(ratio.ratio[low], expected, rtol=1e-12)
    np.testing.assert_allclose(ratio.ratio[~low], 1.0, rtol=1e-12)
    assert ratio.max == pytest.approx(expected) and ratio.median == pytest.approx(expected) and expected > 5
    assert ratio.levels[ratio.argmax] == pytest.approx(0.02)


def test_costlier_ratio_is_one_when_both_cost_models_agree():
    points = _points(agreement_records())
    small4, big1 = _cost(SMALL, 256, 4), _cost(BIG, 1024, 1)
    assert small4.compute_flops < big1.compute_flops and small4.eflops < big1.eflops  # the premise
    ratio = scaling.costlier_ratio(points, levels=20)
    assert ratio.flops_model == ratio.eflops_model
    assert ratio.flops_model == ("small",) * 10 + ("big",) * 10
    np.testing.assert_allclose(ratio.ratio, 1.0, rtol=1e-12)
    assert ratio.max == pytest.approx(1.0) and ratio.median == pytest.approx(1.0)


def test_isocost_grid_holds_accuracy_and_cost_per_model_and_budget():
    grid = scaling.isocost_grid(_points(disagreement_records()))
    assert grid.models == ("small", "big") and grid.gen_tokens == (2048, 4096, 8192)
    assert grid.params == (paper_params(SMALL), paper_params(BIG))
    np.testing.assert_array_equal(grid.accuracy, [[0, 0, 0.75], [1, 1, 1]])
    assert grid.eflops[0, 2] == pytest.approx(_cost(SMALL, 8192).eflops)
    assert grid.flops[1, 0] == pytest.approx(_cost(BIG, 2048).compute_flops)
    bon = scaling.isocost_grid(_points(agreement_records()))
    assert bon.gen_tokens == (256, 512, 1024, 2048) and np.isnan(bon.accuracy[1, 0]) and np.isnan(bon.accuracy[0, 3])


def test_dense_and_sparse_get_their_own_frontiers():
    points = _points(disagreement_records() + disagreement_records(SPARSE, small_only=True))
    grid = scaling.cost_grid(points, "eflops", 64)
    by_policy = scaling.policy_frontiers(points, "eflops", grid)
    assert list(by_policy) == ["dense", "block_topk-256"]
    assert by_policy["block_topk-256"].models == ("small",)
    sparse = [p for p in points if p.policy != "dense"]
    dense_small = [p for p in points if p.policy == "dense" and p.model == "small"]
    cheaper = scaling.budget_curve(sparse, "eflops").min_budget(0.75)
    assert cheaper == pytest.approx(_cost(SMALL, 8192, attention=SPARSE).eflops)
    assert cheaper < 0.5 * scaling.budget_curve(dense_small, "eflops").min_budget(0.75)

    analysis = scaling.analyze(points, grid_points=32)  # the main frontier keeps the dense runs only
    assert analysis.num_configurations == 6 and analysis.num_queries == 4
    assert list(analysis.policies["flops"]) == ["dense", "block_topk-256"]
    assert analysis.ratio.max == pytest.approx(_cost(SMALL, 8192).eflops / _cost(BIG, 2048).eflops)
    assert set(analysis.fits["eflops"]) == {"small", "big"}
    assert scaling.analyze(points, grid_points=32, policy="all").num_configurations == 9
    with pytest.raises(ValueError, match="topk-512"):
        scaling.analyze(points, policy="topk-512")


def test_queries_missing_from_a_run_are_left_out():
    records = [r for r in disagreement_records() if not (r["model"] == "big" and r["problem_id"] == "p3")]
    points = _points(records)
    assert all(p.queries == ("p0", "p1", "p2") for p in points)
    np.testing.assert_array_equal(_model(points, "small")[2].metric, [1, 1, 1])
