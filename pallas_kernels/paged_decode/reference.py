"""Page-list flash decode in plain jnp: the specification that the Pallas kernels must match.

Shapes (R = independent requests, Hkv = KV heads, S = list length, L = layers, P = pages in the pool):
  q                 [R, Hkv, rows, D]               float32 or bfloat16; the rows of q[r, h] share one token list
  k_cache, v_cache  [L, Hkv, P, page_size, D]       the whole multi-layer page pool, q's dtype
  layer             int32 scalar                    which layer of the pool to read
  pages, lo, hi     int32 [R, Hkv, S]               entry j: slots [lo, hi) of page pages[r, h, j]
  count             int32 [R, Hkv]                  only entries j < count[r, h] exist

Entry j of (r, h) lies in split s = j // c with c = ceil(count / num_splits), so split s covers the entries
[s * c, min((s + 1) * c, count)). For each split the result is
  o    float32 [R, Hkv, num_splits, rows, D]   softmax(q k^T * D**-0.5) v over the split's tokens
  lse  float32 [R, Hkv, num_splits, rows]      log-sum-exp of those scaled scores
and a split without tokens gives o = 0, lse = -inf. Scores and softmax are float32; probabilities are cast to
v's dtype before the PV product, which accumulates in float32 (as the kernels do).

This version gathers every listed page (and the entries beyond count, which it then masks), so it is a
readable spec and the "xla" fallback, not a fast kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _split_of_entries(count: jax.Array, num_entries: int, num_splits: int) -> jax.Array:
    """int32 [R, Hkv, S]: the split each entry belongs to, or num_splits for entries j >= count."""
    c = jnp.maximum((count + num_splits - 1) // num_splits, 1)[..., None]
    j = jnp.arange(num_entries, dtype=jnp.int32)
    return jnp.where(j < count[..., None], j // c, num_splits)


def paged_decode_partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                          pages: jax.Array, lo: jax.Array, hi: jax.Array, count: jax.Array, *,
                          num_splits: int) -> tuple[jax.Array, jax.Array]:
    """(o float32 [R, Hkv, num_splits, rows, D], lse float32 [R, Hkv, num_splits, rows]); see the module doc."""
    r, hkv, rows, d = q.shape
    num_entries, page_size = pages.shape[-1], k_cache.shape[-2]
    split = _split_of_entries(count, num_entries, num_splits)                      # [R, Hkv, S]
    safe_pages = jnp.where(split < num_splits, pages, 0)
    heads = jnp.arange(hkv)[None, :, None]
    k = k_cache[layer, heads, safe_pages].reshape(r, hkv, num_entries * page_size, d)  # one gather
    v = v_cache[layer, heads, safe_pages].reshape(r, hkv, num_entries * page_size, d)

    slot = jnp.arange(page_size)
    in_range = (slot >= lo[..., None]) & (slot < hi[..., None])                   # [R, Hkv, S, page_size]
    token_split = jnp.where(in_range, split[..., None], num_splits).reshape(r, hkv, -1)
    in_split = token_split[:, :, None, :] == jnp.arange(num_splits)[:, None]       # [R, Hkv, splits, T]

    precision = lax.Precision.HIGHEST
    scores = jnp.einsum("rhqd,rhtd->rhqt", q, k, preferred_element_type=jnp.float32, precision=precision)
    scores = jnp.where(in_split[:, :, :, None, :], scores[:, :, None] * d ** -0.5, -jnp.inf)
    m = jnp.max(scores, axis=-1)                                                   # [R, Hkv, splits, rows]
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    p = jnp.exp(scores - m_safe[..., None])
    l = jnp.sum(p, axis=-1)
    v = jnp.where((token_split < num_splits)[..., None], v, 0)                     # masked slots may hold NaN
    pv = jnp.einsum("rhsqt,rhtd->rhsqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32,
                    precision=precision)
    o = pv / jnp.where(l > 0, l, 1.0)[..., None]
    lse = jnp.where(l > 0, m_safe + jnp.log(l), -jnp.inf)
    return o, lse
