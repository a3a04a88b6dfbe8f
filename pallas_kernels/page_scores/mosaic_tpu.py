"""Page scores on TPU: a Pallas Mosaic kernel. Semantics and shapes: see reference.py.

An XLA gather of summary rows is charged by XLA's TPU cost model (and risks being run) as a pass over the
whole summary array; this kernel reads exactly the listed rows. Grid (R,): program r looks its entries' pages up in
its page table (in SMEM, so no index array is built) and DMAs the summary rows [Hkv, D] of the entries it reads
(one DMA per page and summary array, all in flight at once; the others are not read) into VMEM, then scores them
against its n queries on the vector units, float32.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu


def _kernel(layer_ref, table_ref, first_ref, lo_ref, hi_ref, *refs, arrays: int, queries: int, width: int):
    q_refs, s_refs = refs[:arrays], refs[arrays:2 * arrays]
    o_ref, bufs, sem = refs[2 * arrays], refs[2 * arrays + 1:3 * arrays + 1], refs[3 * arrays + 1]
    r = pl.program_id(0)
    entries = bufs[0].shape[0]
    lo, hi, layer, first = lo_ref[r], hi_ref[r], layer_ref[0], first_ref[0]
    copies = []
    for c in range(entries):
        page = table_ref[r * width + jnp.minimum(jnp.maximum(first + c, 0), width - 1)]
        copies.append((c, [pltpu.make_async_copy(s.at[layer, page], buf.at[c], sem) for s, buf in zip(s_refs, bufs)]))
    for c, group in copies:
        @pl.when((c >= lo) & (c < hi))
        def _start():
            for copy in group:
                copy.start()
    for c, group in copies:
        @pl.when((c >= lo) & (c < hi))
        def _wait():
            for copy in group:
                copy.wait()
    entry = jax.lax.broadcasted_iota(jnp.int32, o_ref.shape[1:], 0)              # [C, Hkv]
    listed = (entry >= lo) & (entry < hi)
    rows = [buf[...].astype(jnp.float32) for buf in bufs]                       # [C, Hkv, D] each
    for i in range(queries):
        total = sum(jnp.sum(row * q[i][None], axis=-1) for row, q in zip(rows, q_refs))
        o_ref[i] = jnp.where(listed, total, -jnp.inf)


def scores(queries: Sequence[jax.Array], summaries: Sequence[jax.Array], layer: jax.Array, table: jax.Array,
           first: jax.Array, lo: jax.Array, hi: jax.Array, *, entries: int,
           interpret: bool | pltpu.InterpretParams = False) -> jax.Array:
    """float32 [R, n, Hkv, entries]; see reference.py."""
    r, n, hkv, d = queries[0].shape
    arrays = len(summaries)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=5, grid=(r,),
        in_specs=[pl.BlockSpec((None, n, hkv, d), lambda i, *_: (i, 0, 0, 0))] * arrays
        + [pl.BlockSpec(memory_space=pl.ANY)] * arrays,
        out_specs=pl.BlockSpec((None, n, entries, hkv), lambda i, *_: (i, 0, 0, 0)),
        scratch_shapes=[pltpu.VMEM((entries, hkv, d), s.dtype) for s in summaries] + [pltpu.SemaphoreType.DMA(())])
    read = r * entries * sum(hkv * d * s.dtype.itemsize for s in summaries)
    out = pl.pallas_call(
        functools.partial(_kernel, arrays=arrays, queries=n, width=table.shape[1]),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((r, n, entries, hkv), jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        cost_estimate=pl.CostEstimate(flops=2 * arrays * r * n * entries * hkv * d, transcendentals=0,
                                      bytes_accessed=read + 4 * r * n * (arrays * hkv * d + entries * hkv)),
        interpret=interpret,
        name="page_scores_mosaic",
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), table.reshape(-1).astype(jnp.int32),
      jnp.reshape(first, (1,)).astype(jnp.int32), lo.astype(jnp.int32), hi.astype(jnp.int32), *queries, *summaries)
    return jnp.swapaxes(out, 2, 3)
