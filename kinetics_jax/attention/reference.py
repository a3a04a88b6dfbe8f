"""Pure-JAX decode attention over the paged KV cache: the specification every kernel is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def paged_dense_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, page_table: jax.Array,
                          lengths: jax.Array) -> jax.Array:
    """One decode step of dense attention for every sequence.

    q: [B, Hq, D] (already rotated); k_pages, v_pages: [pages, page_size, Hkv, D] of one layer; page_table:
    int32[B, M]; lengths: int32[B], the tokens cached for each sequence (positions 0 .. length-1 are attended).
    Query head h reads KV head h // (Hq / Hkv). Scores and softmax in float32. Returns [B, Hq, D] in q's dtype.
    """
    b, hq, d = q.shape
    _, page_size, hkv, _ = k_pages.shape
    k = k_pages[page_table].reshape(b, -1, hkv, d)  # [B, M * page_size, Hkv, D]
    v = v_pages[page_table].reshape(b, -1, hkv, d)
    qg = q.reshape(b, hkv, hq // hkv, d)
    scores = jnp.einsum("bkgd,btkd->bkgt", qg, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    visible = jnp.arange(k.shape[1])[None, :] < lengths[:, None]  # [B, T]
    scores = jnp.where(visible[:, None, None, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgt,btkd->bkgd", probs, v).reshape(b, hq, d)
