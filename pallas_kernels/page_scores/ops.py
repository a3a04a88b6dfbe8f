"""Public page scores; the one place that picks an implementation (see reference.py for the semantics).

implementation None chooses per lowering platform: tpu -> the Mosaic kernel (reads exactly the listed summary
rows), every other platform -> the XLA gather (GPUs gather rows efficiently). "mosaic" / "xla" force one;
`interpret` runs the Mosaic kernel in interpret mode (tests on CPU).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from pallas_kernels.page_scores import mosaic_tpu, reference

IMPLEMENTATIONS = ("mosaic", "xla")


def scores(queries: Sequence[jax.Array], summaries: Sequence[jax.Array], layer: jax.Array, table: jax.Array,
           first: jax.Array, lo: jax.Array, hi: jax.Array, *, entries: int, implementation: str | None = None,
           interpret: bool = False) -> jax.Array:
    """float32 [R, n, Hkv, entries]: sum over arrays of queries . summaries[layer, table[r, first + c]] for
    lo[r] <= c < hi[r], -inf elsewhere."""
    if implementation not in (None,) + IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS} or None")
    queries, summaries = tuple(queries), tuple(summaries)
    k = len(queries)
    mosaic = lambda *a: mosaic_tpu.scores(a[:k], a[k:-5], *a[-5:], entries=entries, interpret=interpret)
    xla = lambda *a: reference.scores(a[:k], a[k:-5], *a[-5:], entries=entries)
    args = queries + summaries + tuple(jnp.asarray(x, jnp.int32) for x in (layer, table, first, lo, hi))
    if implementation == "xla":
        return xla(*args)
    if implementation == "mosaic":
        return mosaic(*args)
    return jax.lax.platform_dependent(*args, default=xla, tpu=mosaic)
