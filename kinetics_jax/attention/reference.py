"""Pure-JAX decode attention for every policy over contiguous KV: the specification.

Each policy's `keep_mask` (kinetics_jax.policies) is written straight from its token-level definition
(docs/policies.md), with no pages, summaries or kernels; this module holds what they share and the attention over
a mask, so that the paged selection and the Pallas kernels can be tested against it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kinetics_jax.policies import AttentionConfig


def group_logits(q: jax.Array, k: jax.Array) -> jax.Array:
    """q [B, Hq, D], k [B, T, Hkv, D] -> float32 logits [B, Hkv, G, T] (unscaled), G = Hq / Hkv."""
    b, hq, d = q.shape
    hkv = k.shape[2]
    return jnp.einsum("bkgd,btkd->bkgt", q.reshape(b, hkv, hq // hkv, d), k, preferred_element_type=jnp.float32)


def top_mask(scores: jax.Array, k: int) -> jax.Array:
    """bool mask of the k best entries along the last axis (-inf entries never chosen; ties: lowest index)."""
    k = min(k, scores.shape[-1])
    values, idx = jax.lax.top_k(scores, k)
    flat_idx = idx.reshape(-1, k)
    rows = jnp.arange(flat_idx.shape[0])[:, None]
    mask = jnp.zeros((flat_idx.shape[0], scores.shape[-1]), bool)
    mask = mask.at[rows, flat_idx].set(values.reshape(-1, k) > -jnp.inf)
    return mask.reshape(scores.shape)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, keep: jax.Array) -> jax.Array:
    """Softmax attention of q [B, Hq, D] over the tokens keep bool[B, Hkv, T] of k, v [B, T, Hkv, D]. Scores and
    softmax in float32; probabilities cast to v's dtype before the value product. Returns [B, Hq, D], q.dtype."""
    b, hq, d = q.shape
    scores = group_logits(q, k) * (d ** -0.5)
    scores = jnp.where(keep[:, :, None, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgt,btkd->bkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, hq, d).astype(q.dtype)


def reference_decode(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, config: AttentionConfig
                     ) -> jax.Array:
    """One decode step of `config`'s policy. q [B, Hq, D] (rotated), k, v [B, T, Hkv, D], lengths int32[B] (the
    tokens 0 .. length-1 are cached). Returns [B, Hq, D] in q's dtype."""
    return masked_attention(q, k, v, config.policy.keep_mask(q, k, lengths))
