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
import numpy as np

from kinetics_jax.attention.policies import AttentionConfig
from kinetics_jax.cache import KVCache
from pallas_kernels import page_scores
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
    return PageList(page_table, None, (lo // page_size)[:, None], _ceil_div(hi, page_size)[:, None],
                    _window(lo, hi))


def _explicit(page_table: jax.Array, blocks: jax.Array, valid: jax.Array, window: jax.Array) -> PageList:
    """A list of the entries blocks int32[R, H, S] where valid, moved to the front in their order (a stable sort:
    no gather, which XLA's TPU compiler would charge as a pass over the whole operand)."""
    _, blocks = jax.lax.sort((~valid, jnp.where(valid, blocks, 0).astype(jnp.int32)), dimension=-1, num_keys=1,
                             is_stable=True)
    count = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    return PageList(page_table, blocks, jnp.zeros_like(count), count, window)


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
    """Full middle blocks (the block top-k candidates) of sequences of `lengths` cached tokens (numpy for numpy
    lengths, known while tracing)."""
    xp = np if isinstance(lengths, (np.ndarray, np.generic)) else jnp
    return xp.maximum(lengths - config.local - config.sink, 0) // config.block_size


def group_means(q: jax.Array, num_kv_heads: int, quest: bool, head_mean: HeadMean | None = None
                ) -> tuple[jax.Array, jax.Array | None]:
    """(qbar, mean_g |q_g|) float32 [B, Hkv, D] of q [B, Hq, D] over each KV head's query group (the second only
    for the Quest score); `head_mean` completes them when a group is split over devices."""
    b, hq, d = q.shape
    mean = head_mean or (lambda x: x)
    qg = q.reshape(b, num_kv_heads, hq // num_kv_heads, d).astype(jnp.float32)
    return mean(jnp.mean(qg, axis=2)), mean(jnp.mean(jnp.abs(qg), axis=2)) if quest else None


def block_scores(qbar: jax.Array, qabs: jax.Array | None, cache: KVCache, layer: jax.Array, page_table: jax.Array,
                 first: jax.Array, lo: jax.Array, hi: jax.Array, entries: int) -> jax.Array:
    """Group-mean scores float32[R, n, Hkv, entries] of the blocks first + c of page_table int32[R, W] (only
    lo[r] <= c < hi[r]; -inf for the others) for queries qbar [R, n, Hkv, D] (n queries per row of the table;
    the summaries are read once for all n).
    "mean": qbar . mean key; "quest": mean_g sum_d max(q_gd min_d, q_gd max_d), computed as
    min . (qbar - qabs) / 2 + max . (qbar + qabs) / 2 with qabs = mean_g |q_g| (the same number: max(a x, a y)
    = a (x + y) / 2 + |a| (y - x) / 2 for x <= y), so no [G, C, D] term is built. The summaries are read by
    pallas_kernels.page_scores: exactly the listed rows."""
    where = (layer, page_table, first, lo, hi)
    if cache.k_mean is not None:
        return page_scores.scores([qbar], [cache.k_mean], *where, entries=entries)
    return page_scores.scores([(qbar - qabs) / 2, (qbar + qabs) / 2], [cache.k_min, cache.k_max], *where,
                              entries=entries)


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
    chosen = min(config.block_topk, max(width - sink_pages, 0))
    n = lengths.astype(jnp.int32)
    n_full = full_blocks(n, config)
    parts = [jnp.broadcast_to(jnp.arange(sink_pages, dtype=jnp.int32), (rows, hkv, sink_pages))]
    valid_parts = [parts[0] * ps < (n + offset)[:, None, None]]
    if chosen:
        best, best_valid = _top_blocks(q, cache, layer, page_table, sink_pages, n_full, chosen, head_mean,
                                       num_samples, shared_pages)
        parts.append(sink_pages + best)
        valid_parts.append(best_valid)
    local = sink_pages + n_full[:, None, None] + jnp.arange(_ceil_div(config.local + ps - 1, ps), dtype=jnp.int32)
    local = jnp.broadcast_to(local, (rows, hkv, local.shape[-1]))
    parts.append(local)
    valid_parts.append(local * ps < (n + offset)[:, None, None])
    return _explicit(page_table, jnp.concatenate(parts, axis=-1), jnp.concatenate(valid_parts, axis=-1),
                     _window(jnp.full_like(n, offset), n + offset))


def _top_blocks(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, first: int,
                n_full: jax.Array, chosen: int, head_mean: HeadMean | None, num_samples: int,
                shared_pages: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(the `chosen` best candidate indices int32[B, Hkv, chosen] in increasing order, which of them exist):
    candidate j < n_full[b] is block first + j of row b's page table; a running top-k over chunks of
    SCORE_CHUNK candidates, the loop's trip count set by the longest row. The prompt's own full pages past the
    sink (shared_pages) are scored first, from one read of their summaries for its num_samples rows."""
    b, _, d = q.shape
    hkv = cache.k.shape[1]
    width = page_table.shape[1]
    qbar, qabs = group_means(q, hkv, cache.k_mean is None, head_mean)
    chunk = min(SCORE_CHUNK, max(width - first, 1))
    step = jnp.arange(chunk, dtype=jnp.int32)

    def merge(state, scores, index):
        """Folds scores float32[B, Hkv, C] of candidates index int32[C] (-inf: none) into the running top-k:
        a stable sort by score (ties keep the lower index, as lax.top_k), no gather."""
        values, best = state
        index = jnp.broadcast_to(index, scores.shape)
        neg, ids = jax.lax.sort((-jnp.concatenate([values, scores], axis=-1), jnp.concatenate([best, index], axis=-1)),
                                dimension=-1, num_keys=1, is_stable=True)
        return -neg[..., :chosen], ids[..., :chosen]

    state = (jnp.full((b, hkv, chosen), -jnp.inf, jnp.float32), jnp.zeros((b, hkv, chosen), jnp.int32))
    shared_end = jnp.zeros_like(n_full)
    if num_samples > 1 and shared_pages is not None:
        prompts = b // num_samples
        shared_end = jnp.minimum(jnp.repeat(jnp.maximum(shared_pages - first, 0), num_samples), n_full)
        limit = shared_end.reshape(prompts, num_samples)
        prompt_table = page_table[::num_samples]
        queries = lambda x: None if x is None else x.reshape(prompts, num_samples, hkv, d)

        def shared_body(i, state):
            hi = jnp.clip(jnp.max(limit, axis=1) - i * chunk, 0, chunk)
            scores = block_scores(queries(qbar), queries(qabs), cache, layer, prompt_table, first + i * chunk,
                                  jnp.zeros_like(hi), hi, chunk)                           # [P, N, Hkv, C]
            index = i * chunk + step
            scores = jnp.where(index < limit[:, :, None, None], scores, -jnp.inf).reshape(b, hkv, chunk)
            return merge(state, scores, index)

        state = jax.lax.fori_loop(0, _ceil_div(jnp.max(shared_end), chunk), shared_body, state)

    def own_body(i, state):
        index = i * chunk + step
        lo = jnp.clip(shared_end - i * chunk, 0, chunk)
        hi = jnp.clip(n_full - i * chunk, 0, chunk)
        scores = block_scores(qbar[:, None], None if qabs is None else qabs[:, None], cache, layer, page_table,
                              first + i * chunk, lo, hi, chunk)[:, 0]
        return merge(state, scores, index)

    # Chunks are aligned at candidate 0 for every row: the rows' prompt parts (scored above) read nothing here.
    start = jnp.min(shared_end) // chunk
    values, best = jax.lax.fori_loop(start, _ceil_div(jnp.max(n_full), chunk), own_body, state)
    best = jnp.sort(jnp.where(values > -jnp.inf, best, width), axis=-1)  # width: no candidate
    return best.astype(jnp.int32), best < width
