"""The policy protocol: defaults, derived numbers, the label grammar, record forms, validation that names the
bad field, and one count formula for numpy and jax.numpy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kinetics_jax.policies import (REGISTRY, AttentionConfig, BlockTopK, Dense, OracleTopK, SlidingWindow,
                                   parse_policy, policy_from_fields)

POLICIES = [Dense(), OracleTopK(topk=100, local=28), BlockTopK(block_topk=64),
            BlockTopK(block_topk=3, block_size=8, sink=5, local=6, score="quest"), SlidingWindow(local=60, sink=0)]


def test_defaults_and_budgets():
    assert AttentionConfig() == AttentionConfig(Dense(), dense_layers=(0,), backend="xla", page_size=None)
    assert AttentionConfig().cache_page_size == 16
    block = AttentionConfig(BlockTopK(block_topk=64))
    assert block.policy.score == "mean" and block.policy.budget == 4 + 16 * 64 and block.cache_page_size == 16
    assert block.page_offset == 12  # sink 4 fills the last 4 slots of the first page: blocks are whole pages
    assert AttentionConfig(BlockTopK(sink=20, block_topk=1)).page_offset == 12
    assert AttentionConfig(BlockTopK(sink=32, block_topk=1)).page_offset == 0
    assert AttentionConfig(BlockTopK(block_topk=1, block_size=32)).cache_page_size == 32  # the cache page is the block
    assert OracleTopK(topk=100, local=28).budget == 132
    assert SlidingWindow(local=60).budget == 64
    assert AttentionConfig(SlidingWindow(local=60), page_size=64).page_offset == 0
    assert AttentionConfig(BlockTopK(block_topk=2, score="quest")).summaries == ("k_min", "k_max")
    assert BlockTopK(block_topk=2).summaries == ("k_mean",)
    assert BlockTopK(block_topk=2).scoring_flops == 2 and BlockTopK(block_topk=2, score="quest").scoring_flops == 4
    assert Dense().summaries == OracleTopK(topk=4).summaries == () and OracleTopK(topk=4).scoring_flops == 0
    AttentionConfig(BlockTopK(block_topk=256, block_size=8), backend="pallas")  # the paper's 8 x 256
    assert AttentionConfig(dense_layers=[0, 3]).dense_layers == (0, 3)
    hash(AttentionConfig(BlockTopK(block_topk=2)))  # a static jit argument
    assert set(REGISTRY) == {"dense", "topk", "block_topk", "strided_block_topk", "sliding_window"}


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.label())
def test_labels_and_record_forms_round_trip(policy):
    assert parse_policy(policy.label()) == policy
    assert policy_from_fields(policy.to_fields()) == policy
    config = AttentionConfig(policy, dense_layers=(0, 2), tile_tokens=32)
    assert AttentionConfig.from_fields(config.to_fields()) == config


def test_label_text():
    assert [p.label() for p in POLICIES] == ["dense", "topk-100:local=28", "block_topk-1024",
                                             "block_topk-24:block_size=8,sink=5,local=6,score=quest",
                                             "sliding_window-60:sink=0"]
    assert parse_policy("block_topk-64:score=quest,sink=8") == BlockTopK(block_topk=4, score="quest", sink=8)
    assert AttentionConfig(BlockTopK(block_topk=4), backend="pallas").describe() == \
        "block_topk-64 (pallas, dense_layers=0)"


def test_records_of_older_versions_are_read():
    """Before the policies were objects, records listed every field flat, and block_size was every kind's page."""
    old = {"kind": "sliding_window", "sink": 4, "local": 64, "topk": None, "block_size": 32, "block_topk": None,
           "score": None, "dense_layers": [0], "backend": "xla", "tile_tokens": None}
    assert AttentionConfig.from_fields(old) == AttentionConfig(SlidingWindow(local=64), page_size=32)
    old_dense = dict(old, kind="dense", local=0, block_size=16)
    assert AttentionConfig.from_fields(old_dense) == AttentionConfig()


@pytest.mark.parametrize("label,why", [
    ("sparse", "kind must be one of"),
    ("block_topk", "expected block_topk-<tokens>"),
    ("block_topk-0", "tokens >= 1"),
    ("block_topk-24", "not a whole number of 16-token blocks"),
    ("block_topk-64:score", "'score' is not <field>=<value>"),
    ("block_topk-64:topk=3", "a field of block_topk"),
    ("block_topk-64:sink=x", "sink='x' is not an integer"),
    ("block_topk-64:score=max", "score"),
    ("dense-8", "dense takes no budget"),
    ("sliding_window-8:topk=3", "topk"),
])
def test_bad_labels_are_named(label, why):
    with pytest.raises(ValueError, match=why):
        parse_policy(label)


@pytest.mark.parametrize("make,field", [
    (lambda: AttentionConfig(backend="cuda"), "backend"),
    (lambda: AttentionConfig("block_topk-4"), "policy"),
    (lambda: OracleTopK(topk=0), "topk"),
    (lambda: BlockTopK(block_topk=0), "block_topk"),
    (lambda: BlockTopK(block_topk=4, block_size=24), "block_size"),
    (lambda: BlockTopK(block_topk=4, block_size=0), "block_size"),
    (lambda: BlockTopK(block_topk=4, score="max"), "score"),
    (lambda: SlidingWindow(local=0), "local"),
    (lambda: BlockTopK(block_topk=4, sink=-1), "sink"),
    (lambda: AttentionConfig(BlockTopK(block_topk=4), page_size=32), "page_size"),
    (lambda: AttentionConfig(page_size=24), "page_size"),
    (lambda: AttentionConfig(dense_layers=(0, 0)), "dense_layers"),
    (lambda: AttentionConfig(dense_layers=(-1,)), "dense_layers"),
    (lambda: AttentionConfig(OracleTopK(topk=8), backend="pallas"), "backend"),
    (lambda: BlockTopK(block_topk=4.0), "block_topk must be an integer >= 1"),
    (lambda: BlockTopK(block_topk=True), "block_topk must be an integer .*a bool"),
    (lambda: BlockTopK(block_topk=4, sink=np.float64(4)), "sink must be an integer"),
    (lambda: AttentionConfig(dense_layers=(0.0,)), "dense_layers must be an integer"),
    (lambda: AttentionConfig(tile_tokens=np.float32(32)), "tile_tokens must be an integer"),
    (lambda: AttentionConfig(tile_tokens=8), "tile_tokens must be an integer >= 16"),
    (lambda: AttentionConfig(tile_tokens=48), "tile_tokens"),
    (lambda: policy_from_fields({"kind": "block_topk", "block_topk": 2, "stride": 3}), "unknown field"),
])
def test_bad_fields_are_named(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_numpy_integers_are_taken_and_stored_as_int():
    """np.int64(4) makes the same config (equal and hash-equal: it is a static jit argument) as 4."""
    ours = AttentionConfig(BlockTopK(block_topk=np.int64(4), sink=np.int32(4), local=np.uint8(0),
                                     block_size=np.int64(16)), dense_layers=np.array([0, 2]), tile_tokens=np.int64(32))
    ref = AttentionConfig(BlockTopK(block_topk=4, sink=4, local=0, block_size=16), dense_layers=(0, 2),
                          tile_tokens=32)
    assert ours == ref and hash(ours) == hash(ref) and ours.page_offset == 12
    p = ours.policy
    assert {type(v) for v in (p.block_topk, p.sink, p.local, p.block_size, ours.tile_tokens,
                              *ours.dense_layers)} == {int}


def test_dense_layers_checked_against_the_model():
    AttentionConfig(dense_layers=(0, 3)).check_layers(4)
    with pytest.raises(ValueError, match="dense_layers has layer 4"):
        AttentionConfig(dense_layers=(0, 4)).check_layers(4)
    assert AttentionConfig().dense_layer_mask(3).all()  # the dense policy: every layer
    assert AttentionConfig(SlidingWindow(local=8), dense_layers=(1,)).dense_layer_mask(3).tolist() == \
        [False, True, False]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.label())
def test_counts_are_one_formula_for_numpy_and_jax(policy):
    """attended / candidate_blocks / active give the same integers under numpy (the cost model) and jax.numpy
    (the engine), and attended is the count of the spec's keep mask."""
    import jax.numpy as jnp

    n = np.arange(1, 300, dtype=np.int64)
    for method in ("attended", "candidate_blocks", "active"):
        host = getattr(policy, method)(n)
        device = np.asarray(getattr(policy, method)(jnp.asarray(n, jnp.int32), jnp))
        np.testing.assert_array_equal(host, device)
    assert (policy.attended(n) <= n).all() and (policy.active(n) == (policy.attended(n) < n)).all()
    lengths = np.array([1, 7, 40, 120, 299])
    q = np.random.default_rng(0).normal(size=(5, 4, 8)).astype(np.float32)
    k = np.random.default_rng(1).normal(size=(5, 300, 2, 8)).astype(np.float32)
    kept = np.asarray(policy.keep_mask(jnp.asarray(q), jnp.asarray(k), jnp.asarray(lengths))).sum(-1)
    np.testing.assert_array_equal(kept, np.broadcast_to(policy.attended(lengths)[:, None], kept.shape))


def test_a_policy_is_a_frozen_dataclass():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BlockTopK(block_topk=2).sink = 3  # type: ignore[misc]
