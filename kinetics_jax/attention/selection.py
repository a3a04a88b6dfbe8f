"""Page lists: which cache pages (and which of their slots) each KV head reads at a decode step, built in XLA.

The kernels read exactly the pages of a `PageList` (pallas_kernels.paged_decode; Triton and Mosaic have no
top_k, so choosing happens here, between kernels). Virtual index i = token + page_offset of a sequence lives in
page-table entry (block) i // page_size, slot i % page_size (see cache.py).

- Dense and cascade reads are one list for every KV head: the page table itself and a range of its entries, so
  nothing of the table's width is built or copied.
- Sliding window and block top-k are short explicit lists (sink pages, chosen blocks, local pages), compacted so
  that the entries read come first.
- Block top-k scores the full blocks from the page summaries in chunks of SCORE_CHUNK blocks, keeping a running
  top-k, in a loop whose trip count follows the longest sequence, not the page table. With N samples per
  prompt, the prompt's shared pages are scored from one read of their summaries for all N samples' queries.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from kinetics_jax.attention.policies import AttentionConfig
from kinetics_jax.cache import NULL_PAGE, KVCache
from pallas_kernels.paged_decode import PageList

HeadMean = Callable[[jax.Array], jax.Array]
"""Completes per-KV-head means over query heads [B, Hkv, D] when a KV head's query group is split over devices."""

SCORE_CHUNK = 64  # candidate blocks scored per loop iteration


def _ceil_div(a, b):
    return -(-a // b)


def _window(lo: jax.Array, hi: jax.Array, lo2: jax.Array | None = None, hi2: jax.Array | None = None) -> jax.Array:
    """int32[R, 4]: the token ranges [lo, hi) and [lo2, hi2) (empty when not given)."""
    zero = jnp.zeros_like(lo)
    return jnp.stack([lo, hi, zero if lo2 is None else lo2, zero if hi2 is None else hi2], axis=-1).astype(jnp.int32)


def dense_pages(page_table: jax.Array, lengths: jax.Array, page_size: int, page_offset: int,
                first_token: jax.Array | None = None) -> PageList:
    """Every cached token of each sequence, from virtual index `first_token` (default page_offset: the cascade
    passes the end of the shared pages): one list for every KV head, the page table's entries
    first_token // page_size .. ceil((lengths + offset) / page_size) - 1. page_table int32[R, M], lengths int32[R]."""
    lo = jnp.full(lengths.shape, page_offset, jnp.int32) if first_token is None else first_token.astype(jnp.int32)
    hi = (lengths + page_offset).astype(jnp.int32)
    return PageList(page_table[:, None, :], None, (lo // page_size)[:, None], _ceil_div(hi, page_size)[:, None],
                    _window(lo, hi))


def _explicit(page_table: jax.Array, blocks: jax.Array, valid: jax.Array, window: jax.Array) -> PageList:
    """A list of the entries blocks int32[R, H, S] where valid, moved to the front; pages from the table."""
    order = jnp.argsort(~valid, axis=-1, stable=True)
    blocks, valid = (jnp.take_along_axis(a, order, axis=-1) for a in (blocks, valid))
    rows, width = page_table.shape
    pages = jnp.take_along_axis(page_table[:, None, :], jnp.clip(blocks, 0, width - 1), axis=-1)
    pages = jnp.where(valid, pages, NULL_PAGE).astype(jnp.int32)
    count = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    return PageList(pages, jnp.where(valid, blocks, 0).astype(jnp.int32), jnp.zeros_like(count), count, window)


def sliding_window_pages(page_table: jax.Array, lengths: jax.Array, config: AttentionConfig) -> PageList:
    """The first `sink` and the last `local` tokens (page_offset is 0 for this kind); one list for every KV head."""
    n = lengths.astype(jnp.int32)
    return ends_pages(page_table, n, config.sink, jnp.maximum(n - config.local, config.sink), config.local,
                      config.block_size)


def ends_pages(page_table: jax.Array, lengths: jax.Array, sink: int, local_start: jax.Array, max_local: int,
               page_size: int) -> PageList:
    """Tokens [0, min(n, sink)) and [local_start, n) (at most max_local of them) of each sequence, page offset 0:
    the sink's pages, then the pages of the local part that are not sink pages; one list for every KV head."""
    ps, rows, n = page_size, page_table.shape[0], lengths
    sink_pages = _ceil_div(sink, ps)
    first = jnp.maximum(local_start // ps, sink_pages)
    local = first[:, None] + jnp.arange(_ceil_div(max(max_local, 1) - 1, ps) + 1, dtype=jnp.int32)
    blocks = jnp.concatenate([jnp.broadcast_to(jnp.arange(sink_pages, dtype=jnp.int32), (rows, sink_pages)), local],
                             axis=-1)[:, None, :]
    valid = blocks * ps < n[:, None, None]
    return _explicit(page_table, blocks, valid, _window(jnp.zeros_like(n), jnp.minimum(n, sink), local_start, n))


def full_blocks(lengths: jax.Array, config: AttentionConfig) -> jax.Array:
    """Full middle blocks (the block top-k candidates) of sequences of `lengths` cached tokens."""
    return jnp.maximum(lengths - config.local - config.sink, 0) // config.block_size


def group_means(q: jax.Array, num_kv_heads: int, quest: bool, head_mean: HeadMean | None = None
                ) -> tuple[jax.Array, jax.Array | None]:
    """(qbar, mean_g |q_g|) float32 [B, Hkv, D] of q [B, Hq, D] over each KV head's query group (the second only
    for the Quest score); `head_mean` completes them when a group is split over devices."""
    b, hq, d = q.shape
    mean = head_mean or (lambda x: x)
    qg = q.reshape(b, num_kv_heads, hq // num_kv_heads, d).astype(jnp.float32)
    return mean(jnp.mean(qg, axis=2)), mean(jnp.mean(jnp.abs(qg), axis=2)) if quest else None


def block_scores(qbar: jax.Array, qabs: jax.Array | None, cache: KVCache, layer: jax.Array, pages: jax.Array
                 ) -> jax.Array:
    """Group-mean scores float32[R, n, Hkv, C] of pages int32[R, C] for queries qbar [R, n, Hkv, D] (n queries
    per row of `pages`; the summaries are read once for all n). "mean": qbar . mean key; "quest": mean_g
    sum_d max(q_gd min_d, q_gd max_d), as qbar . (min + max) / 2 + mean_g |q_g| . (max - min) / 2 (the same
    number: max(a x, a y) = a (x + y) / 2 + |a| (y - x) / 2 for x <= y), so no [G, C, D] term is built."""
    read = lambda summary: summary[layer, :, pages].astype(jnp.float32)  # [R, C, Hkv, D]
    if cache.k_mean is not None:
        return jnp.einsum("rnkd,rckd->rnkc", qbar, read(cache.k_mean))
    k_min, k_max = read(cache.k_min), read(cache.k_max)
    return (jnp.einsum("rnkd,rckd->rnkc", qbar, (k_min + k_max) / 2)
            + jnp.einsum("rnkd,rckd->rnkc", qabs, (k_max - k_min) / 2))


def block_topk_pages(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
                     config: AttentionConfig, head_mean: HeadMean | None = None, num_samples: int = 1,
                     shared_pages: jax.Array | None = None) -> PageList:
    """Sink pages, the `block_topk` best full blocks of the middle, and the local pages (the local window plus
    the trailing partial block), per KV head. q [B, Hq, D]; the cache pages are shifted by config.page_offset so
    that the sink fills pages 0 .. sink_pages - 1 exactly and block j is page-table entry sink_pages + j.
    num_samples, shared_pages int32[P]: B = P x num_samples rows whose first shared_pages[p] entries are the
    prompt's (their summaries are read once for the prompt's samples)."""
    ps, offset = config.block_size, config.page_offset
    rows, width = page_table.shape
    hkv = cache.k.shape[1]
    sink_pages = _ceil_div(config.sink, ps)
    candidates = max(width - sink_pages, 0)
    chosen = min(config.block_topk, candidates)
    n = lengths.astype(jnp.int32)
    n_full = full_blocks(n, config)
    parts = [jnp.broadcast_to(jnp.arange(sink_pages, dtype=jnp.int32), (rows, hkv, sink_pages))]
    valid_parts = [parts[0] * ps < (n + offset)[:, None, None]]
    if chosen:
        best, best_valid = _top_blocks(q, cache, layer, page_table[:, sink_pages:], n_full, chosen, config,
                                       head_mean, num_samples, shared_pages)
        parts.append(sink_pages + best)
        valid_parts.append(best_valid)
    local = sink_pages + n_full[:, None, None] + jnp.arange(_ceil_div(config.local + ps - 1, ps), dtype=jnp.int32)
    local = jnp.broadcast_to(local, (rows, hkv, local.shape[-1]))
    parts.append(local)
    valid_parts.append(local * ps < (n + offset)[:, None, None])
    return _explicit(page_table, jnp.concatenate(parts, axis=-1), jnp.concatenate(valid_parts, axis=-1),
                     _window(jnp.full_like(n, offset), n + offset))


def _top_blocks(q: jax.Array, cache: KVCache, layer: jax.Array, candidate_pages: jax.Array, n_full: jax.Array,
                chosen: int, config: AttentionConfig, head_mean: HeadMean | None, num_samples: int,
                shared_pages: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(the `chosen` best candidate indices int32[B, Hkv, chosen] in increasing order, which of them exist):
    candidates j < n_full[b] are the pages candidate_pages[b, j]; a running top-k over chunks of SCORE_CHUNK."""
    b, _, d = q.shape
    hkv = cache.k.shape[1]
    rows, width = candidate_pages.shape
    qbar, qabs = group_means(q, hkv, cache.k_mean is None, head_mean)
    chunk = min(SCORE_CHUNK, width)
    step = jnp.arange(chunk, dtype=jnp.int32)

    def merge(state, scores, index):
        """Folds scores float32[B, Hkv, C] of candidates index int32[B, 1, C] (-inf: none) into the top-k."""
        values, best = state
        values, top = jax.lax.top_k(jnp.concatenate([values, scores], axis=-1), chosen)
        index = jnp.broadcast_to(index, scores.shape)
        return values, jnp.take_along_axis(jnp.concatenate([best, index], axis=-1), top, axis=-1)

    state = (jnp.full((b, hkv, chosen), -jnp.inf, jnp.float32), jnp.zeros((b, hkv, chosen), jnp.int32))
    shared_end = jnp.zeros_like(n_full)
    if num_samples > 1 and shared_pages is not None:
        # The prompt's full pages past the sink are its first candidates: one summary read for its N samples.
        prompts = b // num_samples
        sink_pages = _ceil_div(config.sink, config.block_size)
        shared_end = jnp.minimum(jnp.repeat(jnp.maximum(shared_pages - sink_pages, 0), num_samples), n_full)
        prompt_pages = candidate_pages[::num_samples]
        limit = shared_end.reshape(prompts, num_samples)

        def shared_body(i, state):
            index = i * chunk + step                                                        # [C]
            pages = prompt_pages[:, jnp.clip(index, 0, width - 1)]
            pages = jnp.where(index < jnp.max(limit, axis=1, keepdims=True), pages, NULL_PAGE)
            scores = block_scores(qbar.reshape(prompts, num_samples, hkv, d),
                             None if qabs is None else qabs.reshape(prompts, num_samples, hkv, d), cache, layer,
                             pages)                                                          # [P, N, Hkv, C]
            scores = jnp.where(index < limit[:, :, None, None], scores, -jnp.inf).reshape(b, hkv, chunk)
            return merge(state, scores, jnp.broadcast_to(index, (b, 1, chunk)))

        state = jax.lax.fori_loop(0, _ceil_div(jnp.max(shared_end), chunk), shared_body, state)

    def own_body(i, state):
        index = shared_end[:, None] + i * chunk + step                                      # [B, C]
        exists = index < n_full[:, None]
        pages = jnp.where(exists, jnp.take_along_axis(candidate_pages, jnp.clip(index, 0, width - 1), axis=1),
                          NULL_PAGE)
        scores = block_scores(qbar[:, None], None if qabs is None else qabs[:, None], cache, layer, pages)[:, 0]
        return merge(state, jnp.where(exists[:, None, :], scores, -jnp.inf), index[:, None, :])

    values, best = jax.lax.fori_loop(0, _ceil_div(jnp.max(n_full - shared_end), chunk), own_body, state)
    best = jnp.sort(jnp.where(values > -jnp.inf, best, width), axis=-1)  # width: no candidate
    return best.astype(jnp.int32), best < width
