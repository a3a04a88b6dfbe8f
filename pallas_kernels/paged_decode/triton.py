"""Page-list flash decode on GPU: a Pallas Triton kernel. Semantics and shapes: see reference.py.

One program per (r, h, split, row block). It reads count[r, h], works out its split's entries
[s * c, min((s + 1) * c, count)) with c = ceil(count / num_splits), and loops over them in-kernel
(lax.fori_loop with run-time bounds). Each step loads one page [page_size, D] of K and V straight from the
whole-array cache refs at (layer, h, pages[r, h, j]), with a load mask of the slots [lo, hi), so unlisted
pages, entries beyond count and slots outside the range are never read. Online softmax in float32
(running max m, sum l, accumulator acc).

Triton constraints: a dot needs >= 16 rows and power-of-two shapes, so the wrapper pads the rows of q to a
power of two >= 16 (tiled in blocks of at most MAX_BLOCK_ROWS via the grid), and page_size and head_dim
must be powers of two >= 16.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MAX_BLOCK_ROWS = 64  # rows of q per program; larger groups (cascade decode) tile over the grid
NUM_WARPS = 4
NUM_STAGES = 2


def _kernel(layer_ref, pages_ref, lo_ref, hi_ref, count_ref,  # int32 [1], [R, Hkv, S] x3, [R, Hkv]
            q_ref, k_ref, v_ref,                             # [block_rows, D]; [L, Hkv, P, page_size, D] x2
            o_ref, lse_ref,                                  # [block_rows, D], [block_rows] (float32)
            *, num_splits: int):
    r, h, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    block_rows, d = q_ref.shape
    page_size = k_ref.shape[-2]
    layer, count = layer_ref[0], count_ref[r, h]
    per_split = lax.div(count + num_splits - 1, num_splits)  # count >= 0: no floor-division sign fix-up
    start = s * per_split
    end = jnp.minimum(start + per_split, count)

    q = q_ref[...]
    slot = jnp.arange(page_size, dtype=jnp.int32)

    def step(j, carry):
        acc, m, l = carry
        page, lo, hi = pages_ref[r, h, j], lo_ref[r, h, j], hi_ref[r, h, j]
        in_range = (slot >= lo) & (slot < hi)                                  # [page_size]
        load_mask = jnp.broadcast_to(in_range[:, None], (page_size, d))
        k = plgpu.load(k_ref.at[layer, h, page], mask=load_mask, other=0.0)    # [page_size, D]
        v = plgpu.load(v_ref.at[layer, h, page], mask=load_mask, other=0.0)
        # HIGHEST: float32 dots in IEEE f32, not TF32 (bfloat16 dots ignore it).
        scores = plgpu.dot(q, k, trans_b=True, precision=lax.Precision.HIGHEST) * d ** -0.5
        scores = jnp.where(in_range[None, :], scores, -jnp.inf)              # [block_rows, page_size]
        m_new = jnp.maximum(m, scores.max(axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)                     # an all-masked page keeps NaN out
        correction = jnp.exp(m - m_safe)
        p = jnp.exp(scores - m_safe[:, None])
        pv = plgpu.dot(p.astype(v.dtype), v, precision=lax.Precision.HIGHEST)
        return acc * correction[:, None] + pv, m_new, l * correction + p.sum(axis=1)

    init = (jnp.zeros((block_rows, d), jnp.float32), jnp.full((block_rows,), -jnp.inf, jnp.float32),
            jnp.zeros((block_rows,), jnp.float32))
    acc, m, l = lax.fori_loop(start, end, step, init)
    o_ref[...] = acc / jnp.where(l > 0, l, 1.0)[:, None]
    lse_ref[...] = jnp.where(l > 0, m + jnp.log(l), -jnp.inf)


def _is_pow2_at_least_16(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def _row_blocking(rows: int) -> tuple[int, int]:
    """(block_rows, padded_rows): a power-of-two block >= 16 (Triton dot minimum), at most MAX_BLOCK_ROWS."""
    block_rows = min(max(16, pl.next_power_of_2(rows)), MAX_BLOCK_ROWS)
    return block_rows, pl.cdiv(rows, block_rows) * block_rows


def paged_decode_partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                          pages: jax.Array, lo: jax.Array, hi: jax.Array, count: jax.Array, *,
                          num_splits: int, interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """(o float32 [R, Hkv, num_splits, rows, D], lse float32 [R, Hkv, num_splits, rows]); see reference.py."""
    num_requests, hkv, rows, d = q.shape
    page_size = k_cache.shape[-2]
    if not _is_pow2_at_least_16(page_size):
        raise ValueError(f"Triton paged decode needs page_size a power of two >= 16, got page_size={page_size}")
    if not _is_pow2_at_least_16(d):
        raise ValueError(f"Triton paged decode needs head_dim a power of two >= 16, got head_dim={d}")
    block_rows, padded_rows = _row_blocking(rows)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, padded_rows - rows), (0, 0)))
    grid = (num_requests, hkv, num_splits, padded_rows // block_rows)
    whole = pl.BlockSpec()  # the whole array: the kernel indexes it with ids read at run time
    o, lse = pl.pallas_call(
        functools.partial(_kernel, num_splits=num_splits),
        grid=grid,
        in_specs=[whole, whole, whole, whole, whole,
                  pl.BlockSpec((None, None, block_rows, d), lambda r, h, s, b: (r, h, b, 0)),
                  whole, whole],
        out_specs=[pl.BlockSpec((None, None, None, block_rows, d), lambda r, h, s, b: (r, h, s, b, 0)),
                   pl.BlockSpec((None, None, None, block_rows), lambda r, h, s, b: (r, h, s, b))],
        out_shape=[jax.ShapeDtypeStruct((num_requests, hkv, num_splits, padded_rows, d), jnp.float32),
                   jax.ShapeDtypeStruct((num_requests, hkv, num_splits, padded_rows), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
        interpret=interpret,
        name="paged_decode_triton",
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), pages, lo, hi, count, q, k_cache, v_cache)
    return o[:, :, :, :rows], lse[:, :, :, :rows]
