"""Scores of cache pages from their summaries, in plain jnp: the specification (and the implementation off TPU).

    scores(queries, summaries, layer, table, first, lo, hi, entries) -> float32 [R, n, Hkv, entries]

queries: one float32 [R, n, Hkv, D] per summary array (n query vectors per row r, e.g. the N samples of a
prompt); summaries: arrays [L, P, Hkv, D] (page-major, any float dtype); layer: int32 scalar; table int32[R, W]:
each row's page table; first: int32 scalar; lo, hi int32[R]. Entry c of row r is block first + c of its page
table, page table[r, first + c], and it is read iff lo[r] <= c < hi[r]. Its score for query i and KV head h is
the sum over arrays a of queries[a][r, i, h] . summaries[a][layer, page, h] (summaries read in float32);
entries not read score -inf.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def scores(queries: Sequence[jax.Array], summaries: Sequence[jax.Array], layer: jax.Array, table: jax.Array,
           first: jax.Array, lo: jax.Array, hi: jax.Array, *, entries: int) -> jax.Array:
    c = jnp.arange(entries, dtype=jnp.int32)
    pages = table[:, jnp.clip(first + c, 0, table.shape[1] - 1)]                             # [R, C]
    total = 0.0
    for q, summary in zip(queries, summaries):
        total = total + jnp.einsum("rnkd,rckd->rnkc", q, summary[layer, pages].astype(jnp.float32))
    read = (c >= lo[:, None]) & (c < hi[:, None])
    return jnp.where(read[:, None, None, :], total, -jnp.inf)
