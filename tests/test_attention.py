"""Causal GQA attention and the q/k-norm-before-RoPE order against a float64 numpy reference."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from kinetics_jax.model.attention import causal_attention


def _reference(q, k, v, valid):
    """float64, one query head at a time; head h reads KV head h // group."""
    b, t, hq, d = q.shape
    group = hq // k.shape[2]
    out = np.zeros(q.shape)
    for i in range(b):
        for h in range(hq):
            scores = q[i, :, h] @ k[i, :, h // group].T / np.sqrt(d)
            visible = np.tril(np.ones((t, t), bool)) & valid[i][None, :]
            scores = np.where(visible, scores, -np.inf)
            rows = visible.any(-1)
            probs = np.zeros_like(scores)
            probs[rows] = np.exp(scores[rows] - scores[rows].max(-1, keepdims=True))
            probs[rows] /= probs[rows].sum(-1, keepdims=True)
            out[i, :, h] = probs @ v[i, :, h // group]
    return out


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (8, 2), (8, 1)])
def test_causal_attention_matches_float64(hq, hkv):
    rng = np.random.default_rng(hq * 10 + hkv)
    b, t, d = 2, 19, 16
    q, k, v = (rng.normal(size=(b, t, h, d)) for h in (hq, hkv, hkv))
    valid = np.ones((b, t), bool)
    valid[1, :5] = False  # left padding in row 1
    ours = np.asarray(causal_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), jnp.asarray(valid)))
    ref = _reference(q, k, v, valid)
    # float32 softmax attention over 19 keys: errors ~1e-6; padding rows are undefined and skipped.
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-5)
    np.testing.assert_allclose(ours[1, 5:], ref[1, 5:], atol=1e-5)
    assert np.all(np.isfinite(ours))
