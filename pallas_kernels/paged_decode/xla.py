"""Page-list flash decode in XLA: the implementation for backends without a kernel (CPU) and backend="xla".

Same semantics and shapes as reference.py, but its work follows the entries actually read, not the list's
capacity nor the rows that read nothing:
- a while loop with a run-time trip count walks the splits in chunks of `chunk_tokens` tokens (ceil(longest
  split / chunk) iterations), each gathering one chunk's pages of K and V for every (r, h, split) and folding
  them into an online softmax (running max m, sum l, accumulator acc, all float32). A step over short sequences
  in a long page table therefore costs what the sequences hold;
- that loop runs over the rows that read something only: they are sorted longest first and taken in groups of
  ceil(R / 4) rows by an outer loop whose trip count is the number of groups they fill, each group running to
  its own longest row. A batch whose rows are mostly empty (a continuous engine's free slots, its drain) costs
  what its live rows read; rows left out get o = 0, lse = -inf, as the specification says.

A row's numerics do not depend on its neighbours: its chunk boundaries start at its own entries, and its
arithmetic is the same in every group (the loop's operations are batched over rows, never reduced across
them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.paged_decode.reference import PageList

CHUNK_TOKENS = 512  # tokens per loop iteration (a multiple of the page size)


def group_rows(rows: int) -> int:
    """Rows per group of the outer loop for `rows` row groups: a quarter of them (rounded up)."""
    return -(-rows // 4)


def paged_decode_partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                          pages: PageList, *, num_splits: int, chunk_tokens: int = CHUNK_TOKENS
                          ) -> tuple[jax.Array, jax.Array]:
    """(o float32 [R, Hkv, num_splits, rows, D], lse float32 [R, Hkv, num_splits, rows]); see reference.py."""
    r, hkv, rows, d = q.shape
    g = group_rows(r)
    groups = -(-r // g)
    entries = jnp.max(jnp.maximum(pages.end - pages.start, 0), axis=-1)                             # [R]
    order = jnp.argsort(-entries, stable=True).astype(jnp.int32)  # longest first; rows that read nothing last
    order = jnp.concatenate([order, jnp.full((groups * g - r,), r, jnp.int32)])  # r: padding (reads nothing)
    live_groups = (jnp.sum(entries > 0, dtype=jnp.int32) + g - 1) // g
    q_padded = jnp.concatenate([q, jnp.zeros((1,) + q.shape[1:], q.dtype)])

    def group(i, out):
        picked = lax.dynamic_slice_in_dim(order, i * g, g)
        o, lse = _partials(q_padded[picked], k_cache, v_cache, layer, pages, picked, num_splits=num_splits,
                           chunk_tokens=chunk_tokens)
        return out[0].at[picked].set(o), out[1].at[picked].set(lse)

    out = (jnp.zeros((r + 1, hkv, num_splits, rows, d), jnp.float32),
           jnp.full((r + 1, hkv, num_splits, rows), -jnp.inf, jnp.float32))
    o, lse = lax.fori_loop(0, live_groups, group, out)
    return o[:r], lse[:r]


def _partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array, pages: PageList,
              rows_of: jax.Array, *, num_splits: int, chunk_tokens: int) -> tuple[jax.Array, jax.Array]:
    """The chunked loop for the row groups `rows_of` int32[R'] of `pages` (q holds those rows, [R', ...])."""
    r, hkv, rows, d = q.shape
    page_size = k_cache.shape[-2]
    chunk = max(1, chunk_tokens // page_size)
    real = rows_of < pages.start.shape[0]                                                          # [R']
    rows_of = jnp.where(real, rows_of, 0)
    start, end, window = pages.start[rows_of], pages.end[rows_of], pages.window[rows_of]
    end = jnp.where(real[:, None], end, start)                                 # a padding row reads nothing
    per_split = (jnp.maximum(end - start, 0) + num_splits - 1) // num_splits                     # [R', Hp]
    first = start[..., None] + jnp.arange(num_splits, dtype=jnp.int32) * per_split[..., None]  # [R', Hp, s]
    last = jnp.minimum(first + per_split[..., None], end[..., None])
    trips = (jnp.max(per_split) + chunk - 1) // chunk
    heads = jnp.arange(hkv)[None, :, None, None]
    slot = jnp.arange(page_size, dtype=jnp.int32)
    w = window[:, None, None, None, None, :]                                                       # [R',1,1,1,1,4]
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else lax.Precision.DEFAULT
    scale = d ** -0.5
    row = rows_of[:, None, None]

    def gather(table: jax.Array, entry: jax.Array) -> jax.Array:
        """table int32[R, Hp or 1, S] at rows_of and entry int32[R', Hp, s, c] -> [R', Hp, s, c]."""
        flat = entry.reshape(r, entry.shape[1], -1)
        lists = jnp.arange(flat.shape[1])[None, :, None] if table.shape[1] > 1 else 0
        return table[row, lists, jnp.clip(flat, 0, table.shape[-1] - 1)].reshape(entry.shape)

    def body(i, carry):
        m, l, acc = carry
        entry = first[..., None] + i * chunk + jnp.arange(chunk, dtype=jnp.int32)                # [R', Hp, s, c]
        exists = entry < last[..., None]
        block = entry if pages.blocks is None else gather(pages.blocks, entry)
        position = block[..., None] * page_size + slot                                           # [R',Hp,s,c,ps]
        read = exists[..., None] & (((position >= w[..., 0]) & (position < w[..., 1]))
                                    | ((position >= w[..., 2]) & (position < w[..., 3])))
        page = jnp.where(exists, gather(pages.table[:, None, :], block), 0)
        page = jnp.broadcast_to(page, (r, hkv) + page.shape[2:])
        read = jnp.broadcast_to(read, (r, hkv) + read.shape[2:]).reshape(r, hkv, num_splits, 1, -1)
        k = k_cache[layer, heads, page].reshape(r, hkv, num_splits, -1, d)                        # [R',Hkv,s,T,D]
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
