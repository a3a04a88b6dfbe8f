"""Qwen3 self-attention: q/k/v projections, per-head q/k RMSNorm (before RoPE), RoPE, GQA, output projection.

The block is split so that decoding can reuse it: `project_qkv` gives rotated q, k and v for some positions;
`project_out` maps attention outputs back to the residual stream. What happens in between (causal attention over
the sequence, or attention over a KV cache) is chosen by the caller; `causal_attention` is the cache-free form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kinetics_jax.config import Qwen3Config
from kinetics_jax.model.layers import (DType, EMBED, HEAD_DIM, HEADS, KV_HEADS, RMSNorm, apply_rope, param,
                                       rope_cos_sin)


class Attention(nnx.Module):
    def __init__(self, config: Qwen3Config, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        h, d = config.hidden_size, config.head_dim
        self.q_proj = param(rngs, (h, config.num_attention_heads, d), (EMBED, HEADS, HEAD_DIM), param_dtype)
        self.k_proj = param(rngs, (h, config.num_key_value_heads, d), (EMBED, KV_HEADS, HEAD_DIM), param_dtype)
        self.v_proj = param(rngs, (h, config.num_key_value_heads, d), (EMBED, KV_HEADS, HEAD_DIM), param_dtype)
        self.o_proj = param(rngs, (config.num_attention_heads, d, h), (HEADS, HEAD_DIM, EMBED), param_dtype)
        norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_norm = RMSNorm(d, HEAD_DIM, **norm)
        self.k_norm = RMSNorm(d, HEAD_DIM, **norm)
        self.rope_theta = config.rope_theta
        self.head_dim = d
        self.dtype = dtype

    def project_qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: [B, T, hidden], positions: int[B, T] -> q [B, T, Hq, D], k and v [B, T, Hkv, D] (q, k rotated)."""
        q, k, v = (_project(x, w[...].astype(self.dtype)) for w in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.q_norm(q), self.k_norm(k)  # Qwen3: per-head RMSNorm over head_dim, *before* RoPE
        cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta, self.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def project_out(self, attn: jax.Array) -> jax.Array:
        """attn: [B, T, Hq, D] -> [B, T, hidden]."""
        w = self.o_proj[...].astype(self.dtype)
        return attn.reshape(attn.shape[:2] + (-1,)) @ w.reshape(-1, w.shape[-1])


def _project(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [B, T, hidden] @ w [hidden, heads, D] -> [B, T, heads, D], as one plain matmul over the flattened heads
    (a dot with two output dimensions makes TPU compilers re-lay the weight out, a copy per layer and step)."""
    return (x @ w.reshape(w.shape[0], -1)).reshape(x.shape[:2] + w.shape[1:])


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array) -> jax.Array:
    """Softmax attention of every query t over keys s <= t with valid[s].

    q: [B, T, Hq, D]; k, v: [B, T, Hkv, D]; valid: bool[B, T]. Query head h reads KV head h // (Hq / Hkv), as
    transformers' repeat_kv. Scores and softmax are float32; probabilities are cast to the compute dtype before
    the value product. A query with no visible key (a left-padding row) gets a uniform average: finite, and
    meaningless, like every output at a padding position.
    Returns [B, T, Hq, D] in q's dtype.
    """
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, t, hkv, hq // hkv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    visible = causal[None, :, :] & valid[:, None, :]  # [B, T(query), T(key)]
    scores = jnp.where(visible[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, hq, d)
