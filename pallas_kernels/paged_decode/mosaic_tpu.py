"""Page-list flash decode on TPU: a Pallas Mosaic kernel. Semantics and shapes: see reference.py.

Grid (R, Hkv, num_splits, row blocks), every program independent ("parallel", so megacore chips spread them
over both cores). The page table, the list (blocks, start / end) and the windows are scalar-prefetched into SMEM;
the page pools stay in HBM (memory space ANY) and the kernel DMAs the pages it reads itself: a tile is
`tile_tokens // page_size` list entries, fetched as that many page DMAs into one VMEM buffer [pages_per_tile, page_size, D]
(K and V each), double-buffered, so the DMAs of tile t + 1 run while tile t is computed. An in-kernel loop with a
run-time trip count walks the program's split of the list: no DMA is issued for an entry past the split's end,
and nothing else of the pool is touched. Online softmax state (m, l, acc) lives in VMEM scratch.

TPU tiling: rows are padded to a multiple of 16 (a bf16 sublane tile; also fine for float32) and tiled in blocks
of at most MAX_BLOCK_ROWS; lse is written lane-dense as [.., rows, 128] and lane 0 is kept. SMEM holds the
scalar-prefetched lists: `check_smem` refuses lists over SMEM_BUDGET bytes before anything is compiled.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.paged_decode.reference import PageList

MAX_BLOCK_ROWS = 256  # rows of q per block; a whole cascade group fits VMEM, so each page is fetched once
LANES = 128
TILE_TOKENS = 128     # default tokens per tile (8 x 16-token pages: one 128-deep MXU pass)
SMEM_BUDGET = 512 * 1024  # bytes of scalar-prefetched lists: half of the 1 MiB scoped SMEM of v5e .. v6e


def _kernel(layer_ref, table_ref, blocks_ref, start_ref, end_ref, window_ref,  # SMEM (flattened int32)
            q_ref,                                   # VMEM [block_rows, D]
            k_hbm, v_hbm,                            # HBM [L, Hkv, P, page_size, D]
            o_ref, lse_ref,                          # VMEM [block_rows, D], [block_rows, 128] (float32)
            k_buf, v_buf, sems,                      # VMEM [2, tile, page_size, D] x2; DMA semaphores [2, 2]
            m_scratch, l_scratch, acc_scratch,       # VMEM [block_rows, 1] x2, [block_rows, D] (float32)
            *, shared_heads: bool, has_blocks: bool, num_entries: int, width: int, num_splits: int, tile: int):
    r, h, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    lists_per_row = 1 if shared_heads else pl.num_programs(1)
    rh = r * lists_per_row + (0 if shared_heads else h)
    page_size, d = k_buf.shape[2], k_buf.shape[3]
    start, end = start_ref[rh], end_ref[rh]
    per_split = lax.div(jnp.maximum(end - start, 0) + num_splits - 1, num_splits)
    first = start + s * per_split
    last = jnp.minimum(first + per_split, end)  # entries first .. last - 1
    num_tiles = lax.div(jnp.maximum(last - first, 0) + tile - 1, tile)
    layer = layer_ref[0]

    def entry(t, i):
        """(block of entry i of tile t, clamped into the split, and whether the entry exists)."""
        e = first + t * tile + i
        e_safe = jnp.maximum(jnp.minimum(e, last - 1), 0)
        return (blocks_ref[rh * num_entries + e_safe] if has_blocks else e_safe), e < last

    def copies(t, slot):
        out = []
        for i in range(tile):
            block, valid = entry(t, i)
            page = table_ref[r * width + jnp.minimum(jnp.maximum(block, 0), width - 1)]
            out.append((valid,
                        pltpu.make_async_copy(k_hbm.at[layer, h, page], k_buf.at[slot, i], sems.at[0, slot]),
                        pltpu.make_async_copy(v_hbm.at[layer, h, page], v_buf.at[slot, i], sems.at[1, slot])))
        return out

    def start_tile(t, slot):
        for valid, k_copy, v_copy in copies(t, slot):
            @pl.when(valid)
            def _start():
                k_copy.start()
                v_copy.start()

    def wait_tile(t, slot):
        for valid, k_copy, v_copy in copies(t, slot):
            @pl.when(valid)
            def _wait():
                k_copy.wait()
                v_copy.wait()

    m_scratch[...] = jnp.full(m_scratch.shape, -jnp.inf, jnp.float32)
    l_scratch[...] = jnp.zeros(l_scratch.shape, jnp.float32)
    acc_scratch[...] = jnp.zeros(acc_scratch.shape, jnp.float32)

    @pl.when(num_tiles > 0)
    def _prefetch_first():
        start_tile(0, 0)

    tokens = tile * page_size
    shift = page_size.bit_length() - 1  # page_size is a power of two
    windows = [window_ref[r * 4 + i] for i in range(4)]

    def positions(axis: int, shape: tuple[int, int], t) -> tuple[jax.Array, jax.Array]:
        """(virtual token index, entry exists) of every tile slot along `axis` of `shape`."""
        lane = lax.broadcasted_iota(jnp.int32, shape, axis)
        which = lane >> shift
        base = jnp.zeros(shape, jnp.int32)
        for i in range(tile):
            block, _ = entry(t, i)
            base = jnp.where(which == i, block * page_size, base)
        return base + (lane & (page_size - 1)), which < last - (first + t * tile)

    def read(position: jax.Array, exists: jax.Array) -> jax.Array:
        w0, w1, w2, w3 = windows
        return exists & (((position >= w0) & (position < w1)) | ((position >= w2) & (position < w3)))

    def body(t, carry):
        slot = lax.rem(t, 2)

        @pl.when(t + 1 < num_tiles)
        def _prefetch_next():
            start_tile(t + 1, 1 - slot)

        wait_tile(t, slot)
        k = k_buf[slot].reshape(tokens, d)
        v = v_buf[slot].reshape(tokens, d)
        lane_mask = read(*positions(1, (1, tokens), t))          # [1, tokens]
        row_mask = read(*positions(0, (tokens, 1), t))           # [tokens, 1]
        # float32 inputs: full-precision MXU passes (fp32 contract precision); bfloat16: the native path.
        precision = lax.Precision.HIGHEST if q_ref.dtype == jnp.float32 else lax.Precision.DEFAULT
        scores = lax.dot_general(q_ref[...], k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32,
                                 precision=precision) * d ** -0.5
        scores = jnp.where(lane_mask, scores, -jnp.inf)
        m_prev = m_scratch[...]
        m_new = jnp.maximum(m_prev, scores.max(axis=1, keepdims=True))      # [block_rows, 1]
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)                  # an all-masked tile keeps NaN out
        correction = jnp.exp(m_prev - m_safe)
        p = jnp.exp(scores - m_safe)
        v = jnp.where(row_mask, v, jnp.zeros_like(v))                      # unread slots may hold NaN
        pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32, precision=precision)
        m_scratch[...] = m_new
        l_scratch[...] = l_scratch[...] * correction + p.sum(axis=1, keepdims=True)
        acc_scratch[...] = acc_scratch[...] * correction + pv
        return carry

    lax.fori_loop(0, num_tiles, body, 0)
    l = l_scratch[...]
    o_ref[...] = acc_scratch[...] / jnp.where(l > 0, l, 1.0)
    lse = jnp.where(l > 0, m_scratch[...] + jnp.log(l), -jnp.inf)
    lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def _row_blocking(rows: int) -> tuple[int, int]:
    """(block_rows, padded_rows): a multiple of 16 rows, at most MAX_BLOCK_ROWS per block."""
    block_rows = min(pl.cdiv(rows, 16) * 16, MAX_BLOCK_ROWS)
    return block_rows, pl.cdiv(rows, block_rows) * block_rows


def smem_bytes(pages: PageList) -> int:
    """Bytes of SMEM the scalar-prefetched list and windows take."""
    arrays = [pages.table, pages.start, pages.end, pages.window] + ([pages.blocks] if pages.blocks is not None else [])
    return 4 * (1 + sum(a.size for a in arrays))


def check_smem(pages: PageList) -> None:
    need = smem_bytes(pages)
    if need > SMEM_BUDGET:
        raise ValueError(f"the TPU decode kernel's page list needs {need} bytes of SMEM (lists {pages.shape}, page table {pages.table.shape}), "
                         f"over its budget of {SMEM_BUDGET}: use fewer rows per call, larger pages, or a shorter "
                         f"page table")


def cost_estimate(q: jax.Array, k_cache: jax.Array, pages: PageList, num_splits: int) -> pl.CostEstimate:
    """What the kernel may read at most: every listed entry's K and V page, q, and the partials written."""
    r, hkv, rows, d = q.shape
    page_size = k_cache.shape[-2]
    entries = r * hkv * pages.shape[-1]
    tokens = entries * page_size
    page_bytes = 2 * tokens * d * k_cache.dtype.itemsize
    out_bytes = r * hkv * num_splits * rows * (d + 1) * 4
    return pl.CostEstimate(flops=4 * rows * tokens * d, transcendentals=rows * tokens,
                           bytes_accessed=page_bytes + q.size * q.dtype.itemsize + out_bytes)


def paged_decode_partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                          pages: PageList, *, num_splits: int, tile_tokens: int = TILE_TOKENS,
                          interpret: bool | pltpu.InterpretParams = False) -> tuple[jax.Array, jax.Array]:
    """(o float32 [R, Hkv, num_splits, rows, D], lse float32 [R, Hkv, num_splits, rows]); see reference.py."""
    num_requests, hkv, rows, d = q.shape
    page_size = k_cache.shape[-2]
    if page_size & (page_size - 1):
        raise ValueError(f"Mosaic paged decode needs page_size a power of two, got page_size={page_size}")
    check_smem(pages)
    _, lists_per_row, num_entries = pages.shape
    block_rows, padded_rows = _row_blocking(rows)
    tile = max(1, min(tile_tokens // page_size, num_entries))  # list entries per tile
    q = jnp.pad(q, ((0, 0), (0, 0), (0, padded_rows - rows), (0, 0)))
    grid = (num_requests, hkv, num_splits, padded_rows // block_rows)
    blocks = pages.blocks if pages.blocks is not None else jnp.zeros((1,), jnp.int32)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=6,
        grid=grid,
        in_specs=[pl.BlockSpec((None, None, block_rows, d), lambda r, h, s, b, *_: (r, h, b, 0)),
                  pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=[pl.BlockSpec((None, None, None, block_rows, d), lambda r, h, s, b, *_: (r, h, s, b, 0)),
                   pl.BlockSpec((None, None, None, block_rows, LANES), lambda r, h, s, b, *_: (r, h, s, b, 0))],
        scratch_shapes=[pltpu.VMEM((2, tile, page_size, d), k_cache.dtype),
                        pltpu.VMEM((2, tile, page_size, d), v_cache.dtype),
                        pltpu.SemaphoreType.DMA((2, 2)),
                        pltpu.VMEM((block_rows, 1), jnp.float32), pltpu.VMEM((block_rows, 1), jnp.float32),
                        pltpu.VMEM((block_rows, d), jnp.float32)],
    )
    kernel = functools.partial(_kernel, shared_heads=lists_per_row == 1,
                               has_blocks=pages.blocks is not None, num_entries=num_entries,
                               width=pages.table.shape[1],
                               num_splits=num_splits, tile=tile)
    o, lse = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((num_requests, hkv, num_splits, padded_rows, d), jnp.float32),
                   jax.ShapeDtypeStruct((num_requests, hkv, num_splits, padded_rows, LANES), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 4),
        cost_estimate=cost_estimate(q, k_cache, pages, num_splits),
        interpret=interpret,
        name="paged_decode_mosaic",
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), pages.table.reshape(-1), blocks.reshape(-1),
      pages.start.reshape(-1), pages.end.reshape(-1), pages.window.reshape(-1), q, k_cache, v_cache)
    return o[:, :, :, :rows], lse[:, :, :, :rows, 0]
