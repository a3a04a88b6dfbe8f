"""Page-list flash decode on TPU: a Pallas Mosaic kernel. Semantics and shapes: see reference.py.

layer, pages, lo, hi and count are scalar-prefetched into SMEM (the int arrays flattened to 1-D). The grid is
(R, Hkv, num_splits, row blocks, steps) with steps = ceil(S / num_splits) last and sequential ("arbitrary"):
step j of split s handles entry e = s * c + j with c = ceil(count / num_splits), as the Triton kernel does,
so splits are real and may run on different cores. The K / V BlockSpecs read the page id in their
index_map, so each step DMAs one page [page_size, D] of (layer, h, pages[r, h, e]) into VMEM. A step past
the split's last entry (or any step when count == 0) re-points to the last page already fetched, so no new
DMA is issued, and pl.when skips its compute. Online softmax state (m, l, acc) lives in VMEM scratch:
initialised at j == 0, written out at the last step.

TPU tiling: rows are padded to a multiple of 16 (a bf16 sublane tile; also fine for float32) and tiled
in blocks of at most MAX_BLOCK_ROWS; lse is written lane-dense as [.., rows, 128] and lane 0 is kept.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

MAX_BLOCK_ROWS = 256  # rows of q per block; a whole cascade group fits VMEM, so each page is fetched once
LANES = 128


def _entry(r, h, s, j, count_ref, hkv: int, num_splits: int):
    """(flat (r, h) index, entry index to fetch, whether step j of split s has an entry to compute)."""
    rh = r * hkv + h
    count = count_ref[rh]
    per_split = lax.div(count + num_splits - 1, num_splits)  # count >= 0: no floor-division sign fix-up
    entry = s * per_split + j
    end = jnp.minimum(s * per_split + per_split, count)
    # Past the end: the split's last entry, or for an empty split the list's last one (count - 1, or 0).
    return rh, jnp.maximum(jnp.minimum(entry, end - 1), 0), entry < end


def page_index_map(r, h, s, b, j, layer_ref, pages_ref, lo_ref, hi_ref, count_ref, *, hkv: int, num_splits: int,
                   num_entries: int) -> tuple:
    """Block index of the K / V page that grid step (r, h, s, b, j) fetches: (layer, h, page id, 0, 0)."""
    del b, lo_ref, hi_ref
    rh, entry, _ = _entry(r, h, s, j, count_ref, hkv, num_splits)
    return layer_ref[0], h, pages_ref[rh * num_entries + entry], 0, 0


def _kernel(layer_ref, pages_ref, lo_ref, hi_ref, count_ref,  # SMEM: int32 [1], [R*Hkv*S] x3, [R*Hkv]
            q_ref, k_ref, v_ref,                             # VMEM: [block_rows, D], [page_size, D] x2
            o_ref, lse_ref,                                  # [block_rows, D], [block_rows, 128] (float32)
            m_scratch, l_scratch, acc_scratch,               # [block_rows, 1] x2, [block_rows, D] (float32)
            *, hkv: int, num_splits: int, num_entries: int):
    r, h, s, j = pl.program_id(0), pl.program_id(1), pl.program_id(2), pl.program_id(4)
    rh, entry, has_entry = _entry(r, h, s, j, count_ref, hkv, num_splits)
    page_size, d = k_ref.shape

    @pl.when(j == 0)
    def _init():
        m_scratch[...] = jnp.full(m_scratch.shape, -jnp.inf, jnp.float32)
        l_scratch[...] = jnp.zeros(l_scratch.shape, jnp.float32)
        acc_scratch[...] = jnp.zeros(acc_scratch.shape, jnp.float32)

    @pl.when(has_entry)
    def _step():
        lo, hi = lo_ref[rh * num_entries + entry], hi_ref[rh * num_entries + entry]
        slot_lanes = lax.broadcasted_iota(jnp.int32, (1, page_size), 1)
        slot_rows = lax.broadcasted_iota(jnp.int32, (page_size, 1), 0)
        # float32 inputs: full-precision MXU passes (fp32 contract precision); bfloat16: the native path.
        precision = lax.Precision.HIGHEST if q_ref.dtype == jnp.float32 else lax.Precision.DEFAULT
        scores = lax.dot_general(q_ref[...], k_ref[...], (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32, precision=precision) * d ** -0.5
        scores = jnp.where((slot_lanes >= lo) & (slot_lanes < hi), scores, -jnp.inf)
        m_prev = m_scratch[...]
        m_new = jnp.maximum(m_prev, scores.max(axis=1, keepdims=True))      # [block_rows, 1]
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)                  # an all-masked page keeps NaN out
        correction = jnp.exp(m_prev - m_safe)
        p = jnp.exp(scores - m_safe)
        v = jnp.where((slot_rows >= lo) & (slot_rows < hi), v_ref[...], 0)  # slots outside [lo, hi) may be NaN
        pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32, precision=precision)
        m_scratch[...] = m_new
        l_scratch[...] = l_scratch[...] * correction + p.sum(axis=1, keepdims=True)
        acc_scratch[...] = acc_scratch[...] * correction + pv

    @pl.when(j == pl.num_programs(4) - 1)
    def _finish():
        l = l_scratch[...]
        o_ref[...] = acc_scratch[...] / jnp.where(l > 0, l, 1.0)
        lse = jnp.where(l > 0, m_scratch[...] + jnp.log(l), -jnp.inf)
        lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def _row_blocking(rows: int) -> tuple[int, int]:
    """(block_rows, padded_rows): a multiple of 16 rows, at most MAX_BLOCK_ROWS per block."""
    block_rows = min(pl.cdiv(rows, 16) * 16, MAX_BLOCK_ROWS)
    return block_rows, pl.cdiv(rows, block_rows) * block_rows


def paged_decode_partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                          pages: jax.Array, lo: jax.Array, hi: jax.Array, count: jax.Array, *,
                          num_splits: int, interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """(o float32 [R, Hkv, num_splits, rows, D], lse float32 [R, Hkv, num_splits, rows]); see reference.py."""
    num_requests, hkv, rows, d = q.shape
    page_size = k_cache.shape[-2]
    num_entries = pages.shape[-1]
    block_rows, padded_rows = _row_blocking(rows)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, padded_rows - rows), (0, 0)))
    steps = pl.cdiv(num_entries, num_splits)
    grid = (num_requests, hkv, num_splits, padded_rows // block_rows, steps)

    page_map = functools.partial(page_index_map, hkv=hkv, num_splits=num_splits, num_entries=num_entries)
    page_spec = pl.BlockSpec((None, None, None, page_size, d), page_map)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=5,
        grid=grid,
        in_specs=[pl.BlockSpec((None, None, block_rows, d), lambda r, h, s, b, j, *_: (r, h, b, 0)),
                  page_spec, page_spec],
        out_specs=[pl.BlockSpec((None, None, None, block_rows, d), lambda r, h, s, b, j, *_: (r, h, s, b, 0)),
                   pl.BlockSpec((None, None, None, block_rows, LANES),
                                lambda r, h, s, b, j, *_: (r, h, s, b, 0))],
        scratch_shapes=[pltpu.VMEM((block_rows, 1), jnp.float32), pltpu.VMEM((block_rows, 1), jnp.float32),
                        pltpu.VMEM((block_rows, d), jnp.float32)],
    )
    o, lse = pl.pallas_call(
        functools.partial(_kernel, hkv=hkv, num_splits=num_splits, num_entries=num_entries),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((num_requests, hkv, num_splits, padded_rows, d), jnp.float32),
                   jax.ShapeDtypeStruct((num_requests, hkv, num_splits, padded_rows, LANES), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="paged_decode_mosaic",
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), pages.reshape(-1), lo.reshape(-1), hi.reshape(-1),
      count.reshape(-1), q, k_cache, v_cache)
    return o[:, :, :, :rows], lse[:, :, :, :rows, 0]
