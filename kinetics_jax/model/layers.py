"""Small building blocks of the Qwen3 decoder: parameters with logical axes, RMSNorm, RoPE and the SwiGLU MLP.

Every parameter is created through `param()`, which attaches logical axis names (e.g. ("embed", "mlp")).
The names and the table mapping them to mesh axes are in `kinetics_jax.sharding.axes`; nothing here knows
about devices.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from kinetics_jax.sharding.axes import EMBED, MLP, VOCAB

DType = Any
Initializer = Callable[[jax.Array, tuple[int, ...], DType], jax.Array]

default_init: Initializer = jax.nn.initializers.normal(stddev=0.02)  # transformers' initializer_range


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype: DType,
          init: Initializer = default_init) -> nnx.Param:
    """A parameter of `shape` in `dtype`, tagged with one logical axis name per dimension."""
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(init(rngs.params(), shape, dtype), sharding_names=axes, eager_sharding=False)


class Embedding(nnx.Module):
    """Token embedding table [vocab, embed]; also the output projection when embeddings are tied."""

    def __init__(self, vocab_size: int, hidden_size: int, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        self.embedding = param(rngs, (vocab_size, hidden_size), (VOCAB, EMBED), param_dtype)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids int[...] -> [..., embed] in the compute dtype."""
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class RMSNorm(nnx.Module):
    """y = cast(x * rsqrt(mean(x^2) + eps), x.dtype) * scale, with the statistics in float32 (as transformers)."""

    def __init__(self, size: int, axis_name: str, *, eps: float, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        # Init with ones like transformers; rngs is accepted for a uniform constructor signature.
        del rngs
        self.scale = nnx.Param(jnp.ones((size,), param_dtype), sharding_names=(axis_name,), eager_sharding=False)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., size] in the compute dtype -> same shape and dtype."""
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * self.scale[...].astype(x.dtype)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float, dtype: DType) -> tuple[jax.Array, jax.Array]:
    """Rotary tables for integer `positions` [...]: cos, sin of shape [..., head_dim] in `dtype`.

    inv_freq = theta^(-2i/head_dim) for i < head_dim/2, angles computed in float32, and the two halves repeated
    ("rotate_half" layout, not interleaved), exactly as transformers' default RoPE.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, heads, head_dim]; cos/sin: [B, T, head_dim]. Half-split rotation x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class DenseMLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Kernels are [in, out]."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, dtype: DType, param_dtype: DType,
                 rngs: nnx.Rngs):
        self.gate_proj = param(rngs, (hidden_size, intermediate_size), (EMBED, MLP), param_dtype)
        self.up_proj = param(rngs, (hidden_size, intermediate_size), (EMBED, MLP), param_dtype)
        self.down_proj = param(rngs, (intermediate_size, hidden_size), (MLP, EMBED), param_dtype)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., hidden] -> [..., hidden]."""
        dt = self.dtype
        h = jax.nn.silu(x @ self.gate_proj[...].astype(dt)) * (x @ self.up_proj[...].astype(dt))
        return h @ self.down_proj[...].astype(dt)
