"""Page-list flash decode on GPU: a Pallas Triton kernel. Semantics and shapes: see reference.py.

One program per (r, h, split, row block). It reads its list's start / end, works out its split's entries, and
loops over them in tiles of `pages_per_tile` entries (lax.fori_loop with run-time bounds). A tile gathers its
entries' blocks and their page ids from the page table (vector loads), then loads those pages of K and V [pages_per_tile, page_size, D] straight
from the whole-array pool refs at (layer, h), with a load mask of the slots in the row's window, so unlisted
pages, entries past the split's end and slots outside the window are never read. Online softmax in float32
(running max m, sum l, accumulator acc).

Triton constraints: a dot needs >= 16 rows and power-of-two shapes, so the wrapper pads the rows of q to a
power of two >= 16 (tiled in blocks of at most `launch(...).block_rows` via the grid), page_size and head_dim must be
powers of two, and a tile must hold at least 16 tokens (pages_per_tile * page_size >= 16).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.paged_decode.reference import PageList

MAX_BLOCK_ROWS = 64  # rows of q per program (32 in float32); larger groups (cascade decode) tile over the grid
TILE_TOKENS = 64     # default tokens per loop iteration in 16-bit dtypes (pages_per_tile = TILE_TOKENS // page_size)


@dataclasses.dataclass(frozen=True)
class Launch:
    """How a kernel is launched, chosen so that it compiles without register spills (checked by ptxas for
    sm_80 and sm_90a in tests/test_compile_kernels.py): 16-bit pools run tensor-core dots, 64-token tiles,
    two pipeline stages, 4 warps (8 for 64-row blocks or 128-token tiles over 16 rows); float32 pools run IEEE
    float32 dots, which hold their operands in registers: 32-token tiles, blocks of at most 32 rows, 8 warps,
    one stage."""

    tile_tokens: int
    block_rows: int
    num_warps: int
    num_stages: int


def launch(dtype, rows: int, tile_tokens: int | None = None) -> Launch:
    """The `Launch` for pools of `dtype` and `rows` query rows (None tile_tokens: the dtype's default)."""
    wide = jnp.dtype(dtype).itemsize >= 4
    tile = tile_tokens or (32 if wide else TILE_TOKENS)
    block_rows = min(max(16, pl.next_power_of_2(rows)), 32 if wide else MAX_BLOCK_ROWS)
    warps = 8 if wide or block_rows * tile > 2048 else 4
    return Launch(tile, block_rows, warps, 1 if wide else 2)

def _kernel(layer_ref, table_ref, blocks_ref, start_ref, end_ref, window_ref,  # int32 [1], [R, W], [R, Hp, S], ..
            q_ref, k_ref, v_ref,                                              # [block_rows, D]; pools
            o_ref, lse_ref,                                                   # [block_rows, D], [block_rows]
            *, shared_heads: bool, has_blocks: bool, num_splits: int, tile: int):
    r, h, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    hp = 0 if shared_heads else h
    block_rows, d = q_ref.shape
    page_size = k_ref.shape[-2]
    layer, start, end = layer_ref[0], start_ref[r, hp], end_ref[r, hp]
    per_split = lax.div(jnp.maximum(end - start, 0) + num_splits - 1, num_splits)
    first = start + s * per_split
    last = jnp.minimum(first + per_split, end)
    num_tiles = lax.div(jnp.maximum(last - first, 0) + tile - 1, tile)
    w0, w1, w2, w3 = (window_ref[r, i] for i in range(4))

    q = q_ref[...]
    slot = jnp.arange(page_size, dtype=jnp.int32)
    column = jnp.arange(d, dtype=jnp.int32)[None, None, :]
    def step(t, carry):
        acc, m, l = carry
        e = first + t * tile + jnp.arange(tile, dtype=jnp.int32)                     # [tile]
        exists = e < last
        e = jnp.where(exists, e, first)
        block = blocks_ref[r, hp, e] if has_blocks else e
        page = table_ref[r, jnp.clip(block, 0, table_ref.shape[1] - 1)]
        position = block[:, None] * page_size + slot[None, :]                        # [tile, page_size]
        read = exists[:, None] & (((position >= w0) & (position < w1)) | ((position >= w2) & (position < w3)))
        load_mask = jnp.broadcast_to(read[:, :, None], (tile, page_size, d))
        at = (layer, h, page[:, None, None], slot[None, :, None], column)  # a gather of whole pages
        k = plgpu.load(k_ref.at[at], mask=load_mask, other=0.0).reshape(tile * page_size, d)
        v = plgpu.load(v_ref.at[at], mask=load_mask, other=0.0).reshape(tile * page_size, d)
        # HIGHEST: float32 dots in IEEE f32, not TF32 (bfloat16 dots ignore it).
        scores = plgpu.dot(q, k, trans_b=True, precision=lax.Precision.HIGHEST) * d ** -0.5
        scores = jnp.where(read.reshape(1, tile * page_size), scores, -jnp.inf)   # [block_rows, tokens]
        m_new = jnp.maximum(m, scores.max(axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)                           # an all-masked tile: no NaN
        correction = jnp.exp(m - m_safe)
        p = jnp.exp(scores - m_safe[:, None])
        pv = plgpu.dot(p.astype(v.dtype), v, precision=lax.Precision.HIGHEST)
        return acc * correction[:, None] + pv, m_new, l * correction + p.sum(axis=1)

    init = (jnp.zeros((block_rows, d), jnp.float32), jnp.full((block_rows,), -jnp.inf, jnp.float32),
            jnp.zeros((block_rows,), jnp.float32))
    acc, m, l = lax.fori_loop(0, num_tiles, step, init)
    o_ref[...] = acc / jnp.where(l > 0, l, 1.0)[:, None]
    lse_ref[...] = jnp.where(l > 0, m + jnp.log(l), -jnp.inf)


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def pages_per_tile(page_size: int, tile_tokens: int = TILE_TOKENS) -> int:
    """List entries per loop iteration: `tile_tokens` tokens, and at least 16 (the Triton dot minimum)."""
    return max(1, max(tile_tokens, 16) // page_size)


def paged_decode_partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                          pages: PageList, *, num_splits: int, tile_tokens: int | None = None,
                          interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """(o float32 [R, Hkv, num_splits, rows, D], lse float32 [R, Hkv, num_splits, rows]); see reference.py.
    tile_tokens: KV tokens per loop iteration (None: `launch`'s default for the pool dtype)."""
    num_requests, hkv, rows, d = q.shape
    page_size = k_cache.shape[-2]
    if not _is_pow2(page_size):
        raise ValueError(f"Triton paged decode needs page_size a power of two, got page_size={page_size}")
    if not (_is_pow2(d) and d >= 16):
        raise ValueError(f"Triton paged decode needs head_dim a power of two >= 16, got head_dim={d}")
    if tile_tokens is not None and not (_is_pow2(tile_tokens) and tile_tokens >= 16):
        raise ValueError(f"Triton paged decode needs tile_tokens a power of two >= 16, got {tile_tokens}")
    config = launch(k_cache.dtype, rows, tile_tokens)
    tile = pages_per_tile(page_size, config.tile_tokens)
    block_rows = config.block_rows
    padded_rows = pl.cdiv(rows, block_rows) * block_rows
    q = jnp.pad(q, ((0, 0), (0, 0), (0, padded_rows - rows), (0, 0)))
    grid = (num_requests, hkv, num_splits, padded_rows // block_rows)
    whole = pl.BlockSpec()  # the whole array: the kernel indexes it with ids read at run time
    blocks = pages.blocks if pages.blocks is not None else jnp.zeros((1, 1, 1), jnp.int32)
    kernel = functools.partial(_kernel, shared_heads=pages.shape[1] == 1,
                               has_blocks=pages.blocks is not None, num_splits=num_splits, tile=tile)
    o, lse = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[whole] * 6 + [pl.BlockSpec((None, None, block_rows, d), lambda r, h, s, b: (r, h, b, 0)),
                                whole, whole],
        out_specs=[pl.BlockSpec((None, None, None, block_rows, d), lambda r, h, s, b: (r, h, s, b, 0)),
                   pl.BlockSpec((None, None, None, block_rows), lambda r, h, s, b: (r, h, s, b))],
        out_shape=[jax.ShapeDtypeStruct((num_requests, hkv, num_splits, padded_rows, d), jnp.float32),
                   jax.ShapeDtypeStruct((num_requests, hkv, num_splits, padded_rows), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=interpret,
        name="paged_decode_triton",
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), pages.table, blocks, pages.start, pages.end, pages.window, q,
      k_cache, v_cache)
    return o[:, :, :, :rows], lse[:, :, :, :rows]
