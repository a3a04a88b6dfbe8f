"""In-place page-pool writes on TPU: Pallas Mosaic kernels with the pools aliased in and out. See reference.py.

The pools stay in HBM (memory space ANY) and are outputs aliased to their inputs, so XLA neither copies them nor
needs a layout of its own for them: they keep the layout the decode kernel reads.

- `write_tokens`: a token is one sublane row of a [page_size, D] tile, narrower than a packed bf16 tile row,
  so each row's page is read into VMEM (one DMA over all KV heads, [Hkv, page_size, D]), its slot replaced,
  and the page written back. Rows go in chunks of ROWS_PER_STEP: every read of a chunk is in flight at once,
  then every write.
- `write_pages`: whole pages go HBM -> HBM, one DMA per page over all KV heads, PAGES_PER_STEP in flight.
- `write_rows`: whole rows [Hkv, D] of a page-major summary array, VMEM -> HBM, one DMA per row (an XLA
  scatter would be charged, and may run, as a pass over the whole array).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

ROWS_PER_STEP = 16
PAGES_PER_STEP = 32


def _start_then_wait(copies: list) -> None:
    """Issues every DMA, then waits for each: the copies run concurrently."""
    for c in copies:
        c.start()
    for c in copies:
        c.wait()


def _tokens_kernel(layer_ref, pages_ref, slots_ref,    # SMEM int32 [1], [B], [B]
                   k_new_ref, v_new_ref,               # VMEM [rows, Hkv, D]
                   k_in, v_in,                          # HBM pools (aliased to the outputs)
                   k_out, v_out,
                   k_buf, v_buf, sems,                  # VMEM [rows, Hkv, page_size, D] x2; DMA semaphores [2]
                   *, num_rows: int):
    del k_in, v_in  # the same buffers as k_out, v_out
    step = pl.program_id(0)
    rows, _, page_size, _ = k_buf.shape
    layer = layer_ref[0]

    def page_copies(i, to_pool: bool):
        b = jnp.minimum(step * rows + i, num_rows - 1)  # a short last chunk repeats its last row (same bytes)
        page = pages_ref[b]
        pairs = ((k_out, k_buf, 0), (v_out, v_buf, 1))
        return [pltpu.make_async_copy(buf.at[i], pool.at[layer, :, page], sems.at[j]) if to_pool else
                pltpu.make_async_copy(pool.at[layer, :, page], buf.at[i], sems.at[j]) for pool, buf, j in pairs]

    _start_then_wait([c for i in range(rows) for c in page_copies(i, False)])
    slot_of = lax.broadcasted_iota(jnp.int32, k_buf.shape[1:], 1)  # [Hkv, page_size, D]
    for i in range(rows):
        slot = slots_ref[jnp.minimum(step * rows + i, num_rows - 1)]
        for buf, new in ((k_buf, k_new_ref), (v_buf, v_new_ref)):
            row = jnp.broadcast_to(new[i][:, None, :].astype(buf.dtype), slot_of.shape)
            buf[i] = jnp.where(slot_of == slot, row, buf[i])
    _start_then_wait([c for i in range(rows) for c in page_copies(i, True)])


def write_tokens(k_pool: jax.Array, v_pool: jax.Array, layer: jax.Array, pages: jax.Array, slots: jax.Array,
                 k: jax.Array, v: jax.Array, *, interpret: bool | pltpu.InterpretParams = False
                 ) -> tuple[jax.Array, jax.Array]:
    """k, v [B, Hkv, D] into slot slots[b] of page pages[b] of `layer` of both pools, in place."""
    num_rows, hkv, d = k.shape
    page_size = k_pool.shape[3]
    rows = min(ROWS_PER_STEP, num_rows)
    steps = pl.cdiv(num_rows, rows)
    pad = steps * rows - num_rows
    k, v = (jnp.pad(x, ((0, pad), (0, 0), (0, 0)), mode="edge") for x in (k, v))  # the clamped rows' values
    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    new_spec = pl.BlockSpec((rows, hkv, d), lambda i, *_: (i, 0, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3, grid=(steps,),
        in_specs=[new_spec, new_spec, any_spec, any_spec], out_specs=[any_spec, any_spec],
        scratch_shapes=[pltpu.VMEM((rows, hkv, page_size, d), k_pool.dtype),
                        pltpu.VMEM((rows, hkv, page_size, d), v_pool.dtype), pltpu.SemaphoreType.DMA((2,))])
    page_bytes = hkv * page_size * d * (k_pool.dtype.itemsize + v_pool.dtype.itemsize)
    return pl.pallas_call(
        functools.partial(_tokens_kernel, num_rows=num_rows),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(k_pool.shape, k_pool.dtype), jax.ShapeDtypeStruct(v_pool.shape, v_pool.dtype)],
        input_output_aliases={5: 0, 6: 1},  # operands: layer, pages, slots, k, v, k_pool, v_pool
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        cost_estimate=pl.CostEstimate(flops=0, transcendentals=0, bytes_accessed=2 * steps * rows * page_bytes),
        interpret=interpret,
        name="paged_write_tokens",
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), pages.astype(jnp.int32), slots.astype(jnp.int32), k, v,
      k_pool, v_pool)


def _pages_kernel(layer_ref, dst_ref, index_ref,   # SMEM int32 [1], [n], [n]
                  k_src, v_src,                    # HBM [M, Hkv, page_size, D]
                  k_in, v_in, k_out, v_out,         # HBM pools (aliased)
                  sems, *, num_pages: int, per_step: int):
    del k_in, v_in
    step = pl.program_id(0)
    layer = layer_ref[0]
    copies = []
    for i in range(per_step):
        j = jnp.minimum(step * per_step + i, num_pages - 1)  # a short last step repeats its last page
        dst, src = dst_ref[j], index_ref[j]
        copies += [pltpu.make_async_copy(k_src.at[src], k_out.at[layer, :, dst], sems.at[0]),
                   pltpu.make_async_copy(v_src.at[src], v_out.at[layer, :, dst], sems.at[1])]
    _start_then_wait(copies)


def write_pages(k_pool: jax.Array, v_pool: jax.Array, layer: jax.Array, dst: jax.Array, k_src: jax.Array,
                v_src: jax.Array, src_index: jax.Array, *, interpret: bool | pltpu.InterpretParams = False
                ) -> tuple[jax.Array, jax.Array]:
    """Page dst[i] of `layer` of both pools := k_src / v_src [src_index[i]] ([M, Hkv, page_size, D]), in place."""
    num_pages = dst.shape[0]
    per_step = min(PAGES_PER_STEP, num_pages)
    steps = pl.cdiv(num_pages, per_step)
    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3, grid=(steps,), in_specs=[any_spec] * 4, out_specs=[any_spec, any_spec],
        scratch_shapes=[pltpu.SemaphoreType.DMA((2,))])
    page_bytes = k_src[0].size * (k_src.dtype.itemsize + v_src.dtype.itemsize)
    return pl.pallas_call(
        functools.partial(_pages_kernel, num_pages=num_pages, per_step=per_step),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(k_pool.shape, k_pool.dtype), jax.ShapeDtypeStruct(v_pool.shape, v_pool.dtype)],
        input_output_aliases={5: 0, 6: 1},  # operands: layer, dst, src_index, k_src, v_src, k_pool, v_pool
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        cost_estimate=pl.CostEstimate(flops=0, transcendentals=0, bytes_accessed=2 * steps * per_step * page_bytes),
        interpret=interpret,
        name="paged_write_pages",
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), dst.astype(jnp.int32), src_index.astype(jnp.int32),
      k_src.astype(k_pool.dtype), v_src.astype(v_pool.dtype), k_pool, v_pool)


def _rows_kernel(layer_ref, rows_ref, x_ref, a_in, a_out, sem, *, num_rows: int, per_step: int):
    del a_in
    step = pl.program_id(0)
    layer = layer_ref[0]
    copies = []
    for i in range(per_step):
        j = jnp.minimum(step * per_step + i, num_rows - 1)  # a short last step repeats its last row
        copies.append(pltpu.make_async_copy(x_ref.at[i], a_out.at[layer, rows_ref[j]], sem))
    _start_then_wait(copies)


def write_rows(array: jax.Array, layer: jax.Array, rows: jax.Array, x: jax.Array, *,
               interpret: bool | pltpu.InterpretParams = False) -> jax.Array:
    """Row rows[i] of `layer` of array [L, P, ...] := x[i] ([n, ...]), in place."""
    num_rows = rows.shape[0]
    per_step = min(ROWS_PER_STEP * 4, num_rows)
    steps = pl.cdiv(num_rows, per_step)
    x = jnp.pad(x.astype(array.dtype), ((0, steps * per_step - num_rows),) + ((0, 0),) * (x.ndim - 1), mode="edge")
    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2, grid=(steps,),
        in_specs=[pl.BlockSpec((per_step,) + x.shape[1:], lambda i, *_: (i,) + (0,) * (x.ndim - 1)), any_spec],
        out_specs=any_spec, scratch_shapes=[pltpu.SemaphoreType.DMA(())])
    return pl.pallas_call(
        functools.partial(_rows_kernel, num_rows=num_rows, per_step=per_step),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(array.shape, array.dtype),
        input_output_aliases={3: 0},  # operands: layer, rows, x, array
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        cost_estimate=pl.CostEstimate(flops=0, transcendentals=0, bytes_accessed=2 * x.size * x.dtype.itemsize),
        interpret=interpret,
        name="paged_write_rows",
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), rows.astype(jnp.int32), x, array)
