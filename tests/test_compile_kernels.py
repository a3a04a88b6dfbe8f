"""Every Pallas kernel compiled for its real targets on this CPU machine: Mosaic for TPU v5e, v5p and v6e (libtpu's
compiler), Triton to cubin for sm_80 and sm_90a (XLA's Triton pipeline, then ptxas). Lowering (`jax.export`)
accepts kernels these compilers reject (scoped VMEM out of memory, unaligned dynamic slices), so only these
checks say a kernel runs on the hardware. A check skips only when its compiler is not installed, and says so.

Shapes are Qwen3's: head_dim 128, 8 KV heads, bfloat16 and float32, query groups 1 to 16 and the cascade's
N x G rows, pages of 8, 16 and 64 tokens, tiles of one or several pages.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from kinetics_jax.cost import targets
from pallas_kernels import page_scores, paged_write, triton_compile
from pallas_kernels.paged_decode import PageList, mosaic_tpu, triton

pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")

HKV, D, LAYERS, POOL_PAGES, ROWS, WIDTH, ENTRIES = 8, 128, 2, 512, 4, 70, 70
# (query rows, page size, dtype, tile tokens): GQA groups 1..16, the cascade (8 samples x group 4), 8- to
# 64-token pages, one page or several per tile.
VARIANTS = [(1, 16, jnp.bfloat16, None), (2, 16, jnp.bfloat16, None), (4, 16, jnp.bfloat16, None),
            (8, 16, jnp.bfloat16, None), (16, 16, jnp.bfloat16, None), (32, 16, jnp.bfloat16, None),
            (4, 8, jnp.bfloat16, None), (4, 64, jnp.bfloat16, None), (4, 16, jnp.bfloat16, 16),
            (4, 16, jnp.float32, None), (16, 64, jnp.float32, None)]
TPU_TARGETS = ("tpu-v5e", "tpu-v5p", "tpu-v6e")


def _skip_unless(target: str) -> None:
    reason = targets.unavailable(target)
    if reason:
        pytest.skip(f"{target}: {reason}")


def _decode_args(rows: int, page_size: int, dtype, sharding=None, explicit: bool = True, width: int = WIDTH,
                 pool_pages: int = POOL_PAGES) -> list:
    sds = lambda shape, d: jax.ShapeDtypeStruct(shape, d, sharding=sharding)
    pool = sds((LAYERS, HKV, pool_pages, page_size, D), dtype)
    ints = lambda *shape: sds(shape, jnp.int32)
    blocks = ints(ROWS, HKV, ENTRIES) if explicit else None
    lists = 1 if blocks is None else HKV
    pages = PageList(ints(ROWS, width), blocks, ints(ROWS, lists), ints(ROWS, lists), ints(ROWS, 4))
    return [sds((ROWS, HKV, rows, D), dtype), pool, pool, ints(), pages]


def _tpu_sharding(target: str) -> NamedSharding:
    return NamedSharding(targets.mesh(target), PartitionSpec())


def _compile_tpu(fn, args) -> None:
    jax.jit(fn).lower(*args).compile()


@pytest.mark.parametrize("target", TPU_TARGETS)
def test_mosaic_decode_kernel_compiles_for_tpu(target):
    _skip_unless(target)
    sharding = _tpu_sharding(target)
    for rows, page_size, dtype, tile in VARIANTS:
        for explicit in (True, False):  # block lists per KV head, and contiguous page-table runs
            fn = functools.partial(mosaic_tpu.paged_decode_partials, num_splits=2,
                                   **({} if tile is None else {"tile_tokens": tile}))
            _compile_tpu(fn, _decode_args(rows, page_size, dtype, sharding, explicit))


@pytest.mark.parametrize("target", TPU_TARGETS)
def test_mosaic_write_and_score_kernels_compile_for_tpu(target):
    _skip_unless(target)
    sharding = _tpu_sharding(target)
    sds = lambda shape, d: jax.ShapeDtypeStruct(shape, d, sharding=sharding)
    for page_size in (8, 16, 64):
        for dtype in (jnp.bfloat16, jnp.float32):
            pool = sds((LAYERS, HKV, POOL_PAGES, page_size, D), dtype)
            rows = sds((64,), jnp.int32)
            _compile_tpu(jax.jit(paged_write.mosaic_tpu.write_tokens, donate_argnums=(0, 1)),
                         [pool, pool, sds((), jnp.int32), rows, rows, sds((64, HKV, D), dtype), sds((64, HKV, D), dtype)])
            src = sds((40, HKV, page_size, D), dtype)
            _compile_tpu(jax.jit(paged_write.mosaic_tpu.write_pages, donate_argnums=(0, 1)),
                         [pool, pool, sds((), jnp.int32), sds((100,), jnp.int32), src, src, sds((100,), jnp.int32)])
    for dtype in (jnp.bfloat16, jnp.float32):
        summary = sds((LAYERS, POOL_PAGES, HKV, D), dtype)
        _compile_tpu(jax.jit(paged_write.mosaic_tpu.write_rows, donate_argnums=(0,)),
                     [summary, sds((), jnp.int32), sds((64,), jnp.int32), sds((64, HKV, D), dtype)])
        for queries, arrays in ((1, 1), (8, 2)):  # one query per row, mean; a prompt's 8 samples, quest
            q = sds((16, queries, HKV, D), jnp.float32)
            fn = functools.partial(page_scores.mosaic_tpu.scores, entries=64)
            _compile_tpu(lambda *a, fn=fn, n=arrays: fn(a[:n], a[n:2 * n], *a[2 * n:]),
                         [q] * arrays + [summary] * arrays + [sds((), jnp.int32), sds((16, 257), jnp.int32),
                                                               sds((), jnp.int32), sds((16,), jnp.int32),
                                                               sds((16,), jnp.int32)])


def test_tpu_compile_rejects_a_kernel_that_lowering_accepts():
    """One 16384-token float32 page per tile needs 2 x 2 x 8 MiB of VMEM buffers: jax.export lowers it, the
    Mosaic compiler refuses it (scoped VMEM out of memory)."""
    _skip_unless("tpu-v5e")
    fn = functools.partial(mosaic_tpu.paged_decode_partials, num_splits=1, tile_tokens=16384)
    shape = dict(explicit=False, width=4, pool_pages=4)
    jax.export.export(jax.jit(fn), platforms=["tpu"])(*_decode_args(4, 16384, jnp.float32, **shape))
    with pytest.raises(Exception, match="(?i)vmem"):
        _compile_tpu(fn, _decode_args(4, 16384, jnp.float32, _tpu_sharding("tpu-v5e"), **shape))


@pytest.fixture(scope="module")
def triton_kernels() -> dict:
    """Every Triton variant compiled for sm_80 and sm_90a (once for the module)."""
    reason = triton_compile.unavailable()
    if reason:
        pytest.skip(f"cuda: {reason}")
    out = {}
    for rows, page_size, dtype, tile in VARIANTS + [(64, 16, jnp.bfloat16, None), (64, 16, jnp.bfloat16, 128),
                                                (64, 16, jnp.float32, None)]:
        kw = {} if tile is None else {"tile_tokens": tile}
        fn = functools.partial(triton.paged_decode_partials, num_splits=4, **kw)
        for arch in ("sm_80", "sm_90a"):
            [kernel] = triton_compile.compile_kernels(fn, *_decode_args(rows, page_size, dtype), arch=arch)
            out[(rows, page_size, jnp.dtype(dtype).name, tile, arch)] = kernel
    return out


def test_triton_decode_kernel_compiles_to_cuda_cubin_without_spills(triton_kernels):
    for (rows, page_size, dtype, tile, arch), kernel in triton_kernels.items():
        where = f"rows {rows}, page {page_size}, {dtype}, tile {tile}, {arch}"
        assert kernel.cubin_bytes > 0 and f".target {arch}" in kernel.ptx, where
        assert kernel.spill_bytes == 0, f"{where}: {kernel.spill_bytes} bytes of register spills"
        assert 0 < kernel.registers <= 255, where
        # The Triton pipeline does not check the shared-memory limit; a kernel over it would fail to launch.
        assert kernel.shared_memory <= triton_compile.SHARED_MEMORY_LIMIT[arch], where


def test_cuda_tiles_of_several_pages_read_more_than_16_tokens_per_iteration(triton_kernels):
    """8-token pages (the paper's 8 x 256 blocks) compile: the tile gathers 8 of them (64 tokens per loop
    iteration); the shared memory of the 128-token tile is larger than the default's."""
    assert triton.pages_per_tile(8) * 8 == triton.TILE_TOKENS == 64
    default = triton_kernels[(4, 16, "bfloat16", None, "sm_90a")]
    small = triton_kernels[(4, 16, "bfloat16", 16, "sm_90a")]
    assert small.shared_memory < default.shared_memory
    assert triton_kernels[(4, 8, "bfloat16", None, "sm_90a")].cubin_bytes > 0


def test_cuda_shared_memory_limit_is_checked_by_the_test_not_the_compiler():
    """A 512-token page "compiles" with more shared memory than an H100 block may use: only the assertion above
    catches it."""
    if triton_compile.unavailable():
        pytest.skip(f"cuda: {triton_compile.unavailable()}")
    fn = functools.partial(triton.paged_decode_partials, num_splits=1)
    [kernel] = triton_compile.compile_kernels(fn, *_decode_args(4, 512, jnp.bfloat16, pool_pages=32), arch="sm_90a")
    assert kernel.shared_memory > triton_compile.SHARED_MEMORY_LIMIT["sm_90a"]
