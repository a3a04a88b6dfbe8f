"""Public in-place page-pool writes; the one place that picks an implementation (see reference.py for shapes).

implementation None chooses per lowering platform: tpu -> the Mosaic kernels (pools aliased in and out), every
other platform -> XLA scatters (in place when the pools are donated or loop-carried). "mosaic" / "xla" force one;
`interpret` runs the Mosaic kernels in interpret mode (tests on CPU).
"""

from __future__ import annotations

import functools

import jax

from pallas_kernels.paged_write import mosaic_tpu, reference

IMPLEMENTATIONS = ("mosaic", "xla")


def _check(implementation: str | None) -> None:
    if implementation not in (None,) + IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS} or None")


def _xla_tokens(k_pool, v_pool, layer, pages, slots, k, v):
    return (reference.write_tokens(k_pool, layer, pages, slots, k),
            reference.write_tokens(v_pool, layer, pages, slots, v))


def _xla_pages(k_pool, v_pool, layer, dst, k_src, v_src, src_index):
    return (reference.write_pages(k_pool, layer, dst, k_src, src_index),
            reference.write_pages(v_pool, layer, dst, v_src, src_index))


def _dispatch(xla_fn, mosaic_fn, implementation: str | None, interpret, *args):
    _check(implementation)
    mosaic = functools.partial(mosaic_fn, interpret=interpret)
    if implementation == "xla":
        return xla_fn(*args)
    if implementation == "mosaic":
        return mosaic(*args)
    return jax.lax.platform_dependent(*args, default=xla_fn, tpu=mosaic)


def write_tokens(k_pool: jax.Array, v_pool: jax.Array, layer: jax.Array, pages: jax.Array, slots: jax.Array,
                 k: jax.Array, v: jax.Array, *, implementation: str | None = None, interpret: bool = False
                 ) -> tuple[jax.Array, jax.Array]:
    """Decode append: k, v [B, Hkv, D] into slot slots[b] of page pages[b] of `layer` of both pools."""
    return _dispatch(_xla_tokens, mosaic_tpu.write_tokens, implementation, interpret,
                     k_pool, v_pool, layer, pages, slots, k, v)


def write_pages(k_pool: jax.Array, v_pool: jax.Array, layer: jax.Array, dst: jax.Array, k_src: jax.Array,
                v_src: jax.Array, src_index: jax.Array, *, implementation: str | None = None,
                interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Prefill: page dst[i] of `layer` of both pools := k_src / v_src [src_index[i]] ([M, Hkv, page_size, D])."""
    return _dispatch(_xla_pages, mosaic_tpu.write_pages, implementation, interpret,
                     k_pool, v_pool, layer, dst, k_src, v_src, src_index)


def write_rows(array: jax.Array, layer: jax.Array, rows: jax.Array, x: jax.Array, *,
               implementation: str | None = None, interpret: bool = False) -> jax.Array:
    """Summaries: row rows[i] of `layer` of the page-major array [L, P, ...] := x[i]."""
    return _dispatch(reference.write_rows, mosaic_tpu.write_rows, implementation, interpret, array, layer, rows, x)
