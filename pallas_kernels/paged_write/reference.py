"""In-place writes into a head-major page pool, in plain jnp (XLA scatters): the specification.

Shapes: pool [L, Hkv, P, page_size, D]; layer int32 scalar.
- `write_tokens(pool, layer, pages, slots, x)`: x [B, Hkv, D] goes to slot slots[b] of page pages[b] (decode: the
  new token of each sequence). Rows that share a page must not share a slot; rows writing the null page may
  leave anything there.
- `write_pages(pool, layer, dst, src, src_index)`: page dst[i] becomes src[src_index[i]] (all its slots), with
  src [M, Hkv, page_size, D] (prefill: the prompt's pages, a page shared by N samples written once, a partial
  last page once per sample). Entries with dst = the null page are padding.

- `write_rows(array, layer, rows, x)`: row rows[i] of `layer` of a page-major array [L, P, ...] becomes x[i]
  (block summaries: one [Hkv, D] row per page). Rows written twice (padding on the null page) may hold either.

Under jit with the pool donated (or carried through a loop) XLA performs these scatters in place on CPU and GPU.
On TPU the scatter wants a pool layout that the Mosaic decode kernel does not accept, so ops.py uses the Mosaic
kernels there.
"""

from __future__ import annotations

import jax


def write_tokens(pool: jax.Array, layer: jax.Array, pages: jax.Array, slots: jax.Array, x: jax.Array) -> jax.Array:
    return pool.at[layer, :, pages, slots].set(x.astype(pool.dtype))


def write_pages(pool: jax.Array, layer: jax.Array, dst: jax.Array, src: jax.Array, src_index: jax.Array
                ) -> jax.Array:
    return pool.at[layer, :, dst].set(src[src_index].astype(pool.dtype))


def write_rows(array: jax.Array, layer: jax.Array, rows: jax.Array, x: jax.Array) -> jax.Array:
    return array.at[layer, rows].set(x.astype(array.dtype))
