"""Page lists: which cache pages (and which of their slots) each KV head reads at a decode step, built in XLA.

The kernels read exactly the pages of a `PageList` (pallas_kernels.paged_decode; Triton and Mosaic have no
top_k, so choosing happens here, between kernels). Virtual index i = token + page_offset of a sequence lives in
page-table entry (block) i // page_size, slot i % page_size (see kinetics_jax.cache).

- Dense and cascade reads are one list for every KV head: the page table itself and a range of its entries, so
  nothing of the table's width is built or copied.
- Sliding window and block top-k are short explicit lists (sink pages, chosen blocks, local pages), compacted so
  that the entries read come first.
- A policy builds its own list from these (kinetics_jax.policies: block top-k scores its blocks there).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from kinetics_jax.checks import ceil_div
from pallas_kernels.paged_decode import PageList

HeadMean = Callable[[jax.Array], jax.Array]
"""Completes per-KV-head means over query heads [B, Hkv, D] when a KV head's query group is split over devices."""


def window(lo: jax.Array, hi: jax.Array, lo2: jax.Array | None = None, hi2: jax.Array | None = None) -> jax.Array:
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
    return PageList(page_table, None, (lo // page_size)[:, None], ceil_div(hi, page_size)[:, None],
                    window(lo, hi))


def explicit_pages(page_table: jax.Array, blocks: jax.Array, valid: jax.Array, window: jax.Array) -> PageList:
    """A list of the entries blocks int32[R, H, S] where valid, moved to the front in their order (a stable sort:
    no gather, which XLA's TPU compiler would charge as a pass over the whole operand)."""
    _, blocks = jax.lax.sort((~valid, jnp.where(valid, blocks, 0).astype(jnp.int32)), dimension=-1, num_keys=1,
                             is_stable=True)
    count = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    return PageList(page_table, blocks, jnp.zeros_like(count), count, window)


def ends_pages(page_table: jax.Array, lengths: jax.Array, sink: int, local_start: jax.Array, max_local: int,
               page_size: int) -> PageList:
    """Tokens [0, min(n, sink)) and [local_start, n) (at most max_local of them) of each sequence, page offset 0:
    the sink's pages, then the pages of the local part that are not sink pages; one list for every KV head."""
    ps, rows, n = page_size, page_table.shape[0], lengths
    sink_pages = ceil_div(sink, ps)
    first = jnp.maximum(local_start // ps, sink_pages)
    local = first[:, None] + jnp.arange(ceil_div(max(max_local, 1) - 1, ps) + 1, dtype=jnp.int32)
    blocks = jnp.concatenate([jnp.broadcast_to(jnp.arange(sink_pages, dtype=jnp.int32), (rows, sink_pages)), local],
                             axis=-1)[:, None, :]
    valid = blocks * ps < n[:, None, None]
    return explicit_pages(page_table, blocks, valid, window(jnp.zeros_like(n), jnp.minimum(n, sink), local_start, n))
