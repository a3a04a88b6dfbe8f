"""The pure-JAX policy references (the spec) against the float64 numpy policies in tests/policy_numpy.py."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import policy_numpy
from kinetics_jax.attention import AttentionConfig, keep_mask, reference_decode

CONFIGS = [
    AttentionConfig(),
    AttentionConfig(kind="sliding_window", sink=4, local=9),
    AttentionConfig(kind="topk", sink=4, local=3, topk=10),
    AttentionConfig(kind="topk", sink=0, local=0, topk=5),
    AttentionConfig(kind="block_topk", sink=4, local=0, block_size=8, block_topk=3),
    AttentionConfig(kind="block_topk", sink=5, local=6, block_size=4, block_topk=4),
    AttentionConfig(kind="block_topk", sink=4, local=0, block_size=8, block_topk=2, score="quest"),
]


def _numpy_kwargs(config: AttentionConfig) -> dict:
    kw = dataclasses.asdict(config)
    for field in ("dense_layers", "backend"):
        kw.pop(field)
    return {key: value for key, value in kw.items() if value is not None}


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
    kept = np.asarray(keep_mask(jnp.asarray(q), jnp.asarray(k), jnp.asarray(lengths), config))
    out = np.asarray(reference_decode(*(jnp.asarray(a) for a in (q, k, v, lengths)), config))
    for b in range(len(lengths)):
        expect = policy_numpy.keep(q[b], k[b], int(lengths[b]), **_numpy_kwargs(config))
        np.testing.assert_array_equal(kept[b], expect, err_msg=f"sequence {b}")
        # float32 scores and softmax over <= 61 tokens against float64: relative error ~1e-6.
        np.testing.assert_allclose(out[b], policy_numpy.attend(q[b], k[b], v[b], expect), rtol=1e-5, atol=1e-5)


def test_active_policies_attend_their_budget_and_dense_below_it():
    q, k, v, lengths = _inputs(0, 8, 2, t=200)
    for config in CONFIGS[1:]:
        kept = np.asarray(keep_mask(jnp.asarray(q), jnp.asarray(k), jnp.asarray(lengths), config)).sum(-1)
        for b, n in enumerate(lengths):
            if config.kind == "block_topk":
                n_full = max(n - config.local - config.sink, 0) // config.block_size
                expect = n if n_full <= config.block_topk else (
                    config.budget + (n - config.local - config.sink) % config.block_size)
            else:
                expect = min(n, config.budget)
            assert (kept[b] == expect).all(), (config, n, kept[b])


def test_budget_at_least_the_length_is_dense():
    q, k, v, lengths = _inputs(3, 8, 2)
    dense = reference_decode(*(jnp.asarray(a) for a in (q, k, v, lengths)), AttentionConfig())
    for config in (AttentionConfig(kind="block_topk", block_size=8, block_topk=8),
                   AttentionConfig(kind="topk", topk=57), AttentionConfig(kind="sliding_window", local=57)):
        out = reference_decode(*(jnp.asarray(a) for a in (q, k, v, lengths)), config)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(dense))
