"""The pure-JAX policy references (the spec) against the float64 numpy policies in tests/policy_numpy.py."""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np
import pytest

import policy_numpy
from kinetics_jax.attention import reference_decode
from kinetics_jax.policies import AttentionConfig, BlockTopK, OracleTopK, SlidingWindow

CONFIGS = [
    AttentionConfig(),
    AttentionConfig(SlidingWindow(sink=4, local=9)),
    AttentionConfig(OracleTopK(sink=4, local=3, topk=10)),
    AttentionConfig(OracleTopK(sink=0, local=0, topk=5)),
    AttentionConfig(BlockTopK(sink=4, local=0, block_size=8, block_topk=3)),
    AttentionConfig(BlockTopK(sink=5, local=6, block_size=4, block_topk=4)),
    AttentionConfig(BlockTopK(sink=4, local=0, block_size=8, block_topk=2, score="quest")),
]


def _inputs(seed: int, hq: int, hkv: int, t: int = 61, b: int = 4, d: int = 16):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, hq, d)).astype(np.float32)
    k = rng.normal(size=(b, t, hkv, d)).astype(np.float32)
    v = rng.normal(size=(b, t, hkv, d)).astype(np.float32)
    lengths = np.array([t, 37, 9, 1][:b], np.int32)  # not multiples of the block; one below every threshold
    return q, k, v, lengths


@pytest.mark.parametrize("config", CONFIGS, ids=AttentionConfig.describe)
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (8, 2), (8, 1)])
def test_reference_matches_float64_policy(config, hq, hkv):
    q, k, v, lengths = _inputs(hq * 7 + hkv, hq, hkv)
    kept = np.asarray(config.policy.keep_mask(jnp.asarray(q), jnp.asarray(k), jnp.asarray(lengths)))
    out = np.asarray(reference_decode(*(jnp.asarray(a) for a in (q, k, v, lengths)), config))
    for b in range(len(lengths)):
        expect = policy_numpy.keep(q[b], k[b], int(lengths[b]), **config.policy.to_fields())
        np.testing.assert_array_equal(kept[b], expect, err_msg=f"sequence {b}")
        # float32 scores and softmax over <= 61 tokens against float64: relative error ~1e-6.
        np.testing.assert_allclose(out[b], policy_numpy.attend(q[b], k[b], v[b], expect), rtol=1e-5, atol=1e-5)


def test_active_policies_attend_their_budget_and_dense_below_it():
    q, k, v, lengths = _inputs(0, 8, 2, t=200)
    for config in CONFIGS[1:]:
        kept = np.asarray(config.policy.keep_mask(jnp.asarray(q), jnp.asarray(k), jnp.asarray(lengths))).sum(-1)
        for b, n in enumerate(lengths):
            if config.policy.kind == "block_topk":
                n_full = max(n - config.policy.local - config.policy.sink, 0) // config.policy.block_size
                expect = n if n_full <= config.policy.block_topk else (
                    config.policy.budget + (n - config.policy.local - config.policy.sink) % config.policy.block_size)
            else:
                expect = min(n, config.policy.budget)
            assert (kept[b] == expect).all(), (config, n, kept[b])


def test_budget_at_least_the_length_is_dense():
    q, k, v, lengths = _inputs(3, 8, 2)
    dense = reference_decode(*(jnp.asarray(a) for a in (q, k, v, lengths)), AttentionConfig())
    for config in (AttentionConfig(BlockTopK(block_size=8, block_topk=8)),
                   AttentionConfig(OracleTopK(topk=57)), AttentionConfig(SlidingWindow(local=57))):
        out = reference_decode(*(jnp.asarray(a) for a in (q, k, v, lengths)), config)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(dense))
