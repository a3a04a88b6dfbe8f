"""Page-list flash decode in XLA: the implementation for backends without a kernel (CPU) and backend="xla".

Same semantics and shapes as reference.py, but its work follows the entries actually read, not the list's
capacity: a while loop with a run-time trip count walks the splits in chunks of `chunk_tokens` tokens
(ceil(longest split / chunk) iterations), each gathering one chunk's pages of K and V for every (r, h, split)
and folding them into an online softmax (running max m, sum l, accumulator acc, all float32). A step over short
sequences in a long page table therefore costs what the sequences hold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.paged_decode.reference import PageList

CHUNK_TOKENS = 512  # tokens per loop iteration (a multiple of the page size)


def paged_decode_partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                          pages: PageList, *, num_splits: int, chunk_tokens: int = CHUNK_TOKENS
                          ) -> tuple[jax.Array, jax.Array]:
    """(o float32 [R, Hkv, num_splits, rows, D], lse float32 [R, Hkv, num_splits, rows]); see reference.py."""
    r, hkv, rows, d = q.shape
    _, lists, num_entries = pages.shape
    page_size = k_cache.shape[-2]
    chunk = max(1, chunk_tokens // page_size)
    per_split = (jnp.maximum(pages.end - pages.start, 0) + num_splits - 1) // num_splits          # [R, Hp]
    first = pages.start[..., None] + jnp.arange(num_splits, dtype=jnp.int32) * per_split[..., None]  # [R, Hp, s]
    last = jnp.minimum(first + per_split[..., None], pages.end[..., None])
    trips = (jnp.max(per_split) + chunk - 1) // chunk
    heads = jnp.arange(hkv)[None, :, None, None]
    slot = jnp.arange(page_size, dtype=jnp.int32)
    w = pages.window[:, None, None, None, None, :]                                                 # [R,1,1,1,1,4]
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else lax.Precision.DEFAULT
    scale = d ** -0.5

    def gather(table: jax.Array, entry: jax.Array) -> jax.Array:
        """table int32[R, Hp or 1, S] at entry int32[R, Hp, s, c] -> [R, Hp, s, c]."""
        flat = entry.reshape(r, entry.shape[1], -1)
        table = jnp.broadcast_to(table, (r, flat.shape[1], table.shape[-1]))
        return jnp.take_along_axis(table, jnp.clip(flat, 0, table.shape[-1] - 1), axis=-1).reshape(entry.shape)

    def body(i, carry):
        m, l, acc = carry
        entry = first[..., None] + i * chunk + jnp.arange(chunk, dtype=jnp.int32)                # [R, Hp, s, c]
        exists = entry < last[..., None]
        block = entry if pages.blocks is None else gather(pages.blocks, entry)
        position = block[..., None] * page_size + slot                                           # [R,Hp,s,c,ps]
        read = exists[..., None] & (((position >= w[..., 0]) & (position < w[..., 1]))
                                    | ((position >= w[..., 2]) & (position < w[..., 3])))
        page = jnp.where(exists, gather(pages.table[:, None, :], block), 0)
        page = jnp.broadcast_to(page, (r, hkv) + page.shape[2:])
        read = jnp.broadcast_to(read, (r, hkv) + read.shape[2:]).reshape(r, hkv, num_splits, 1, -1)
        k = k_cache[layer, heads, page].reshape(r, hkv, num_splits, -1, d)                        # [R,Hkv,s,T,D]
        v = v_cache[layer, heads, page].reshape(r, hkv, num_splits, -1, d)
        scores = jnp.einsum("rhqd,rhstd->rhsqt", q, k, preferred_element_type=jnp.float32,
                            precision=precision) * scale
        scores = jnp.where(read, scores, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        correction = jnp.exp(m - m_safe)
        p = jnp.exp(scores - m_safe[..., None])
        v = jnp.where(jnp.swapaxes(read, -1, -2), v, jnp.zeros_like(v))                           # may hold NaN
        pv = jnp.einsum("rhsqt,rhstd->rhsqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32,
                        precision=precision)
        return m_new, l * correction + jnp.sum(p, axis=-1), acc * correction[..., None] + pv

    init = (jnp.full((r, hkv, num_splits, rows), -jnp.inf, jnp.float32),
            jnp.zeros((r, hkv, num_splits, rows), jnp.float32),
            jnp.zeros((r, hkv, num_splits, rows, d), jnp.float32))
    m, l, acc = lax.fori_loop(0, trips, body, init)
    o = acc / jnp.where(l > 0, l, 1.0)[..., None]
    lse = jnp.where(l > 0, m + jnp.log(l), -jnp.inf)
    return o, lse
