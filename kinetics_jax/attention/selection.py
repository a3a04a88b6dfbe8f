"""Page lists: which cache pages (and which slots of them) each KV head reads at a decode step, built in XLA.

The Pallas kernels read exactly the pages of a `PageList` (Triton and Mosaic have no top_k, so choosing happens
here, between kernels). Virtual index i = token + page_offset of a sequence lives in page-table entry
i // page_size, slot i % page_size (see cache.py). An entry is (page id, slot range [lo, hi)); valid entries
come first and `count` says how many there are, so a kernel never touches the rest.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from kinetics_jax.attention.policies import AttentionConfig
from kinetics_jax.cache import NULL_PAGE, KVCache


HeadMean = Callable[[jax.Array], jax.Array]
"""Completes per-KV-head means over query heads [B, Hkv, D] when a KV head's query group is split over devices."""


class PageList(NamedTuple):
    """pages, lo, hi: int32[R, Hkv, S]; count: int32[R, Hkv]. Entry j < count of (r, h) attends slots
    lo..hi-1 of page pages[r, h, j]."""

    pages: jax.Array
    lo: jax.Array
    hi: jax.Array
    count: jax.Array

    def tokens(self) -> jax.Array:
        """int32[R, Hkv]: KV tokens the list attends."""
        return jnp.sum(self.hi - self.lo, axis=-1)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def from_windows(page_table: jax.Array, index: jax.Array, win_lo: jax.Array, win_hi: jax.Array, page_size: int,
                 *, compact: bool = True) -> PageList:
    """Entries at page-table positions index int32[R, Hkv, S], each attending the part of the virtual window
    [win_lo, win_hi) (int32, broadcastable to index) that falls in its page. page_table: int32[R, M].
    compact: move the entries that attend nothing behind the others (False when they already are)."""
    start = index * page_size
    lo = jnp.clip(win_lo - start, 0, page_size)
    hi = jnp.maximum(jnp.clip(win_hi - start, 0, page_size), lo)
    valid = hi > lo
    if compact:
        order = jnp.argsort(~valid, axis=-1, stable=True)  # valid entries first, in their order
        index, lo, hi, valid = (jnp.take_along_axis(a, order, axis=-1) for a in (index, lo, hi, valid))
    width = page_table.shape[1]
    pages = jnp.take_along_axis(page_table[:, None, :], jnp.clip(index, 0, width - 1), axis=-1)
    zero = jnp.zeros_like(lo)
    return PageList(jnp.where(valid, pages, NULL_PAGE).astype(jnp.int32), jnp.where(valid, lo, zero),
                    jnp.where(valid, hi, zero), jnp.sum(valid, axis=-1).astype(jnp.int32))


def dense_pages(page_table: jax.Array, lengths: jax.Array, num_kv_heads: int, page_size: int, page_offset: int,
                first_token: jax.Array | None = None) -> PageList:
    """Every cached token of each sequence (from virtual index `first_token`, default page_offset: the cascade
    passes the end of the shared pages). page_table int32[R, M], lengths int32[R]. The tokens are one run of
    consecutive entries, listed from the first, so no compaction is needed."""
    rows, width = page_table.shape
    lo = jnp.full((rows,), page_offset, jnp.int32) if first_token is None else first_token
    index = (lo // page_size)[:, None, None] + jnp.arange(width, dtype=jnp.int32)
    index = jnp.broadcast_to(index, (rows, num_kv_heads, width))
    return from_windows(page_table, index, lo[:, None, None], (lengths + page_offset)[:, None, None], page_size,
                        compact=False)


def sliding_window_pages(page_table: jax.Array, lengths: jax.Array, num_kv_heads: int, config: AttentionConfig
                         ) -> PageList:
    """The first `sink` and the last `local` tokens (page_offset is 0 for this kind)."""
    ps, rows = config.block_size, page_table.shape[0]
    n = lengths[:, None, None]
    sink_entries = jnp.arange(_ceil_div(config.sink, ps), dtype=jnp.int32)
    first_local = jnp.maximum(n - config.local, config.sink)  # [R, 1, 1]
    local_entries = first_local // ps + jnp.arange(_ceil_div(config.local - 1, ps) + 1, dtype=jnp.int32)
    shape = (rows, num_kv_heads)
    index = jnp.concatenate([jnp.broadcast_to(sink_entries, shape + sink_entries.shape),
                             jnp.broadcast_to(local_entries, shape + local_entries.shape[-1:])], axis=-1)
    is_sink = jnp.arange(index.shape[-1]) < sink_entries.size
    win_lo = jnp.where(is_sink, 0, first_local)
    win_hi = jnp.where(is_sink, jnp.minimum(n, config.sink), n)
    return from_windows(page_table, index, win_lo, win_hi, ps)


def full_blocks(lengths: jax.Array, config: AttentionConfig) -> jax.Array:
    """Full middle blocks (the block top-k candidates) of sequences of `lengths` cached tokens."""
    return jnp.maximum(lengths - config.local - config.sink, 0) // config.block_size


def block_scores(q: jax.Array, cache: KVCache, layer: jax.Array, pages: jax.Array, score: str,
                 head_mean: HeadMean | None = None) -> jax.Array:
    """Group-mean block scores float32[B, Hkv, C] of pages int32[B, C] from the cache's page summaries.

    "mean": mean_g q_g . (k_sum / page_size). "quest": mean_g sum_d max(q_gd min_d, q_gd max_d), computed as
    qbar . (min + max) / 2 + mean_g |q_g| . (max - min) / 2 (the same number: max(a x, a y) = a (x + y) / 2 +
    |a| (y - x) / 2 for x <= y), so no [G, C, D] intermediate is built. Both only need means over the group, so
    a group split over devices is handled by `head_mean` (distributed.kv_head_mean) combining them.
    """
    b, hq, d = q.shape
    hkv = cache.k.shape[1]
    mean = head_mean or (lambda x: x)
    qg = q.reshape(b, hkv, hq // hkv, d).astype(jnp.float32)
    qbar = mean(jnp.mean(qg, axis=2))
    if score == "mean":
        means = cache.k_sum[layer, :, pages] / cache.page_size  # [B, C, Hkv, D]
        return jnp.einsum("bkd,bckd->bkc", qbar, means)
    k_min, k_max = cache.k_min[layer, :, pages], cache.k_max[layer, :, pages]
    return (jnp.einsum("bkd,bckd->bkc", qbar, (k_min + k_max) / 2)
            + jnp.einsum("bkd,bckd->bkc", mean(jnp.mean(jnp.abs(qg), axis=2)), (k_max - k_min) / 2))


def block_topk_pages(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
                     config: AttentionConfig, head_mean: HeadMean | None = None) -> PageList:
    """Sink pages, the `block_topk` best full blocks of the middle, and the local pages (the local window plus
    the trailing partial block). q [B, Hq, D]; the cache pages are shifted by config.page_offset so that the
    sink fills pages 0 .. sink_pages - 1 exactly and block j is page-table entry sink_pages + j."""
    ps, offset = config.block_size, config.page_offset
    rows, width = page_table.shape
    hkv = cache.k.shape[1]
    sink_pages = _ceil_div(config.sink, ps)
    candidates = max(width - sink_pages, 0)
    n = lengths[:, None, None]
    n_full = full_blocks(n, config)  # [B, 1, 1]
    parts = [jnp.broadcast_to(jnp.arange(sink_pages, dtype=jnp.int32), (rows, hkv, sink_pages))]
    chosen = min(config.block_topk, candidates)
    if chosen:
        # Only the n_full real candidates are read; the rest point at the null page (one cached line).
        real = jnp.arange(candidates) < n_full[:, 0]
        scores = block_scores(q, cache, layer, jnp.where(real, page_table[:, sink_pages:], NULL_PAGE),
                              config.score, head_mean)
        scores = jnp.where(jnp.arange(candidates) < n_full, scores, -jnp.inf)
        _, best = jax.lax.top_k(scores, chosen)
        # fewer candidates than the budget (policy not active yet): the first n_full of the top_k are all of them
        best = jnp.where(jnp.arange(chosen) < n_full, best, width)  # width: past the table, an empty entry
        parts.append(sink_pages + best.astype(jnp.int32))
    local = jnp.arange(_ceil_div(config.local + ps - 1, ps), dtype=jnp.int32)
    parts.append(jnp.broadcast_to(sink_pages + n_full + local, (rows, hkv, local.size)))
    index = jnp.concatenate(parts, axis=-1)
    return from_windows(page_table, index, offset, n + offset, ps)
