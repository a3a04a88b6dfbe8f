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
from kinetics_jax.model.layers import DType, RMSNorm, apply_rope, param, rope_cos_sin
from kinetics_jax.sharding.axes import EMBED, HEAD_DIM, HEADS, KV_HEADS


class Attention(nnx.Module):
    def __init__(self, config: Qwen3Config, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        h, d = config.hidden_size, config.head_dim
        # [heads, head_dim, in] (HF's [out, in] with the heads split out): the layout a TPU matmul reads as stored;
        # [in, heads, head_dim] would make the compiler re-lay each layer's weight out at every step.
        self.q_proj = param(rngs, (config.num_attention_heads, d, h), (HEADS, HEAD_DIM, EMBED), param_dtype)
        self.k_proj = param(rngs, (config.num_key_value_heads, d, h), (KV_HEADS, HEAD_DIM, EMBED), param_dtype)
        self.v_proj = param(rngs, (config.num_key_value_heads, d, h), (KV_HEADS, HEAD_DIM, EMBED), param_dtype)
        self.o_proj = param(rngs, (config.num_attention_heads, d, h), (HEADS, HEAD_DIM, EMBED), param_dtype)
        norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_norm = RMSNorm(d, HEAD_DIM, **norm)
        self.k_norm = RMSNorm(d, HEAD_DIM, **norm)
        self.rope_theta = config.rope_theta
        self.head_dim = d
        self.dtype = dtype

    def project_qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: [B, T, hidden], positions: int[B, T] -> q [B, T, Hq, D], k and v [B, T, Hkv, D] (q, k rotated)."""
        q, k, v = (jnp.einsum("bte,hde->bthd", x, w[...].astype(self.dtype))
                   for w in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.q_norm(q), self.k_norm(k)  # Qwen3: per-head RMSNorm over head_dim, *before* RoPE
        cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta, self.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def project_out(self, attn: jax.Array) -> jax.Array:
        """attn: [B, T, Hq, D] -> [B, T, hidden]."""
        return jnp.einsum("bthd,hde->bte", attn, self.o_proj[...].astype(self.dtype))



PREFILL_BLOCK = 512  # query and key tokens per block of the blocked causal attention


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array) -> jax.Array:
    """Softmax attention of every query t over keys s <= t with valid[s].

    q: [B, T, Hq, D]; k, v: [B, T, Hkv, D]; valid: bool[B, T]. Query head h reads KV head h // (Hq / Hkv), as
    transformers' repeat_kv. Scores and softmax are float32; probabilities are cast to the compute dtype before
    the value product. A query with no visible key (a left-padding row) gets an average of values: finite, and
    meaningless, like every output at a padding position. Sequences longer than PREFILL_BLOCK go block by block
    (`_blocked`), so memory follows T * PREFILL_BLOCK, not T^2.
    Returns [B, T, Hq, D] in q's dtype.
    """
    if q.shape[1] > PREFILL_BLOCK:
        return _blocked(q, k, v, valid)
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


def _blocked(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array) -> jax.Array:
    """causal_attention in blocks of PREFILL_BLOCK queries x keys with an online softmax (float32 running max,
    sum and accumulator): query block i visits key blocks 0 .. i only, a loop with a run-time trip count."""
    b, t, hq, d = q.shape
    hkv, n = k.shape[2], PREFILL_BLOCK
    blocks = -(-t // n)
    pad = ((0, 0), (0, blocks * n - t), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
    valid = jnp.pad(valid, ((0, 0), (0, blocks * n - t)))
    qg = q.reshape(b, blocks, n, hkv, hq // hkv, d)
    lowest = jnp.finfo(jnp.float32).min
    offsets = jnp.arange(n)

    def query_block(i):
        qi = qg[:, i]                                                                   # [B, n, Hkv, G, D]

        def key_block(j, carry):
            m, l, acc = carry
            kj, vj = (jax.lax.dynamic_slice_in_dim(x, j * n, n, axis=1) for x in (k, v))
            scores = jnp.einsum("btkgd,bskd->bkgts", qi, kj, preferred_element_type=jnp.float32) * (d ** -0.5)
            visible = ((j * n + offsets)[None, :] <= (i * n + offsets)[:, None])[None] \
                & jax.lax.dynamic_slice_in_dim(valid, j * n, n, axis=1)[:, None, :]   # [B, n(query), n(key)]
            scores = jnp.where(visible[:, None, None], scores, lowest)
            m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
            p = jnp.exp(scores - m_new[..., None])
            correction = jnp.exp(m - m_new)
            pv = jnp.einsum("bkgts,bskd->bkgtd", p.astype(q.dtype), vj, preferred_element_type=jnp.float32)
            return m_new, l * correction + jnp.sum(p, axis=-1), acc * correction[..., None] + pv

        shape = (b, hkv, hq // hkv, n)
        init = (jnp.full(shape, lowest, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(shape + (d,), jnp.float32))
        m, l, acc = jax.lax.fori_loop(0, i + 1, key_block, init)
        return (acc / l[..., None]).astype(q.dtype)                                     # [B, Hkv, G, n, D]

    out = jax.lax.map(query_block, jnp.arange(blocks))                                  # [blocks, B, Hkv, G, n, D]
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, blocks * n, hq, d)
    return out[:, :t]
