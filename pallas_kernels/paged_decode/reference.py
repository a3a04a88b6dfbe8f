"""Page-list flash decode in plain jnp: the specification that every implementation must match.

Shapes (R = independent row groups, Hkv = KV heads, S = list length, L = layers, P = pages in the pool):
  q                 [R, Hkv, rows, D]               float32 or bfloat16; the rows of q[r, h] share one token list
  k_cache, v_cache  [L, Hkv, P, page_size, D]       the whole multi-layer page pool, q's dtype
  layer             int32 scalar                    which layer of the pool to read
  pages             `PageList`                      which pages, and which of their slots, each (r, h) reads

A list entry j of (r, h) names a block b = pages.blocks[r, h', j] (h' = h, or 0 when the list is shared by every
KV head; b = j when blocks is None): a position in row r's page table, whose page pages.table[r, b] holds the
sequence's virtual token indices b * page_size .. b * page_size + page_size - 1 (see kinetics_jax/cache/layout.py).
Slot t of the entry is read iff b * page_size + t lies in the row's window [w0, w1) or [w2, w3). Only the
entries start[r, h'] .. end[r, h'] - 1 are read: the others (and every other page, slot and layer) may hold
anything, NaN included.

Entries [start, end) are cut into num_splits consecutive splits of c = ceil((end - start) / num_splits)
entries (split s: [start + s c, min(start + (s + 1) c, end))). For each split the result is
  o    float32 [R, Hkv, num_splits, rows, D]   softmax(q k^T * D**-0.5) v over the split's tokens
  lse  float32 [R, Hkv, num_splits, rows]      log-sum-exp of those scaled scores
and a split without tokens gives o = 0, lse = -inf. Scores and softmax are float32; probabilities are cast to
v's dtype before the PV product, which accumulates in float32 (as the kernels do).

This version gathers every entry of the list (S of them, whatever start and end say) and then masks, so it is a
readable spec, not an implementation: `xla.py` is the XLA one, whose work follows the entries actually read.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class PageList(NamedTuple):
    """The KV tokens each (r, h) reads: entries start .. end - 1 of a list of blocks, masked by a token window.

    table   int32[R, W]: each row's page table (page id of each block); the kernels look the pages up themselves,
            so no per-entry page array is ever built.
    blocks  int32[R, Hp, S], or None: the entries' blocks; Hp = 1 (one list for every KV head: dense, cascade and
            sliding-window reads) or Hkv. None means entry j is block j (S = W, Hp = 1): a contiguous run of the
            page table, as dense reads take it.
    start, end  int32[R, Hp]: the entries read.
    window  int32[R, 4]: virtual token index ranges [w0, w1) and [w2, w3) that are read (empty when w1 <= w0).
    """

    table: jax.Array
    blocks: jax.Array | None
    start: jax.Array
    end: jax.Array
    window: jax.Array

    @property
    def shape(self) -> tuple[int, int, int]:
        """(R, Hp, S): row groups, lists per row, entries per list."""
        if self.blocks is not None:
            return tuple(self.blocks.shape)
        return (self.table.shape[0], 1, self.table.shape[1])

    def entry_blocks(self) -> jax.Array:
        """int32[R, Hp, S]: the block of every entry."""
        if self.blocks is not None:
            return self.blocks
        return jnp.broadcast_to(jnp.arange(self.table.shape[1], dtype=jnp.int32), self.shape)

    def entry_pages(self) -> jax.Array:
        """int32[R, Hp, S]: the page of every entry (a gather: for specifications and XLA code)."""
        blocks = jnp.clip(self.entry_blocks(), 0, self.table.shape[1] - 1)
        return jnp.take_along_axis(self.table[:, None, :], blocks.reshape(blocks.shape[0], 1, -1),
                                   axis=-1).reshape(blocks.shape)

    def tokens(self, page_size: int) -> jax.Array:
        """int32[R, Hp]: KV tokens the list reads (per KV head)."""
        return jnp.sum(token_mask(self, page_size), axis=(-2, -1), dtype=jnp.int32)


def token_mask(pages: PageList, page_size: int) -> jax.Array:
    """bool[R, Hp, S, page_size]: which slots of which entries are read."""
    s = pages.shape[-1]
    j = jnp.arange(s, dtype=jnp.int32)
    listed = (j >= pages.start[..., None]) & (j < pages.end[..., None])                 # [R, Hp, S]
    position = pages.entry_blocks()[..., None] * page_size + jnp.arange(page_size, dtype=jnp.int32)
    w = pages.window[:, None, None, None, :]                                              # [R, 1, 1, 1, 4]
    in_window = (((position >= w[..., 0]) & (position < w[..., 1]))
                 | ((position >= w[..., 2]) & (position < w[..., 3])))
    return listed[..., None] & in_window


def split_of_entries(start: jax.Array, end: jax.Array, num_entries: int, num_splits: int) -> jax.Array:
    """int32 [R, Hp, S]: the split each entry belongs to, or num_splits for entries outside [start, end)."""
    c = jnp.maximum((end - start + num_splits - 1) // num_splits, 1)[..., None]
    j = jnp.arange(num_entries, dtype=jnp.int32)
    inside = (j >= start[..., None]) & (j < end[..., None])
    return jnp.where(inside, (j - start[..., None]) // c, num_splits)


def paged_decode_partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                          pages: PageList, *, num_splits: int) -> tuple[jax.Array, jax.Array]:
    """(o float32 [R, Hkv, num_splits, rows, D], lse float32 [R, Hkv, num_splits, rows]); see the module doc."""
    r, hkv, rows, d = q.shape
    num_entries, page_size = pages.shape[-1], k_cache.shape[-2]
    split = split_of_entries(pages.start, pages.end, num_entries, num_splits)             # [R, Hp, S]
    split = jnp.broadcast_to(split, (r, hkv, num_entries))
    read = jnp.broadcast_to(token_mask(pages, page_size), (r, hkv, num_entries, page_size))
    safe_pages = jnp.where(split < num_splits, jnp.broadcast_to(pages.entry_pages(), split.shape), 0)
    heads = jnp.arange(hkv)[None, :, None]
    k = k_cache[layer, heads, safe_pages].reshape(r, hkv, num_entries * page_size, d)     # one gather
    v = v_cache[layer, heads, safe_pages].reshape(r, hkv, num_entries * page_size, d)

    token_split = jnp.where(read, split[..., None], num_splits).reshape(r, hkv, -1)
    in_split = token_split[:, :, None, :] == jnp.arange(num_splits)[:, None]             # [R, Hkv, splits, T]

    precision = lax.Precision.HIGHEST
    scores = jnp.einsum("rhqd,rhtd->rhqt", q, k, preferred_element_type=jnp.float32, precision=precision)
    scores = jnp.where(in_split[:, :, :, None, :], scores[:, :, None] * d ** -0.5, -jnp.inf)
    m = jnp.max(scores, axis=-1)                                                          # [R, Hkv, splits, rows]
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    p = jnp.exp(scores - m_safe[..., None])
    l = jnp.sum(p, axis=-1)
    v = jnp.where((token_split < num_splits)[..., None], v, 0)                            # unread slots: maybe NaN
    pv = jnp.einsum("rhsqt,rhtd->rhsqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32,
                    precision=precision)
    o = pv / jnp.where(l > 0, l, 1.0)[..., None]
    lse = jnp.where(l > 0, m_safe + jnp.log(l), -jnp.inf)
    return o, lse
