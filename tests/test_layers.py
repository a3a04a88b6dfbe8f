"""RMSNorm, RoPE and the SwiGLU MLP against float64 numpy references and transformers' own RoPE helpers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from kinetics_jax.model.layers import DenseMLP, RMSNorm, apply_rope, rope_cos_sin


def test_rmsnorm_matches_float64():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 48)).astype(np.float32)
    norm = RMSNorm(48, "embed", eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    scale = rng.normal(size=48).astype(np.float32)
    norm.scale[...] = jnp.asarray(scale)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-6) * scale
    # float32 arithmetic on O(1) values: ~1e-7 relative; 1e-5 leaves room for the reduction order.
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-5)


def test_rope_matches_transformers():
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    rng = np.random.default_rng(1)
    b, t, h, d, theta = 2, 7, 3, 32, 1e6
    q = rng.normal(size=(b, t, h, d)).astype(np.float32)
    positions = rng.integers(0, 4000, (b, t))
    cos, sin = rope_cos_sin(jnp.asarray(positions), d, theta, jnp.float32)
    ours = np.asarray(apply_rope(jnp.asarray(q), cos, sin))
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    angles = positions[..., None].astype(np.float64) * inv_freq
    emb = np.concatenate([angles, angles], -1)
    ref, _ = apply_rotary_pos_emb(torch.tensor(q).transpose(1, 2), torch.tensor(q).transpose(1, 2),
                                  torch.tensor(np.cos(emb)), torch.tensor(np.sin(emb)))
    # Angles reach 4000 rad; float32 angle rounding (~2.4e-4 rad at that size) bounds the difference.
    np.testing.assert_allclose(ours, ref.transpose(1, 2).numpy(), atol=2e-3)


def test_rope_is_half_split_not_interleaved():
    """Position 1 with theta -> inf rotates channel 0 against channel d/2 (not channel 1)."""
    d = 8
    x = np.zeros((1, 1, 1, d), np.float32)
    x[..., 0] = 1.0
    cos, sin = rope_cos_sin(jnp.ones((1, 1), jnp.int32), d, 1.0, jnp.float32)
    out = np.asarray(apply_rope(jnp.asarray(x), cos, sin))[0, 0, 0]
    assert out[0] == pytest.approx(np.cos(1.0), abs=1e-6) and out[d // 2] == pytest.approx(np.sin(1.0), abs=1e-6)
    assert out[1] == 0.0


def test_dense_mlp_matches_float64():
    rng = np.random.default_rng(2)
    mlp = DenseMLP(16, 40, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(3))
    x = rng.normal(size=(3, 16)).astype(np.float32)
    g, u, dn = (np.asarray(p[...], np.float64) for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    a = x @ g
    ref = (a / (1 + np.exp(-a)) * (x @ u)) @ dn
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-6)
