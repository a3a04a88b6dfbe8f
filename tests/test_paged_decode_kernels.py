"""Page-list flash decode kernels (pallas_kernels.paged_decode) against the jnp reference and float64 numpy.

The Triton and Mosaic kernels run in interpret mode on CPU. Every case poisons what must not be read: all
other layers of the pool (NaN), and at the attended layer every slot that no listed entry covers (K huge,
V NaN), including the pages that entries beyond count point at. The lowering tests export both kernels at
Qwen3 shapes for "cuda" and "tpu" with jax.export, which runs the Pallas->Triton and Pallas->Mosaic
lowerings on this CPU-only machine.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowering import export_mlir
from pallas_kernels.paged_decode import merge_partials, mosaic_tpu, paged_decode, paged_decode_partials, triton

# jax 0.11 warns that Pallas Triton is deprecated (for Mosaic GPU); the project keeps it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")

KERNELS = ("triton", "mosaic")
# float32: f32 scores and accumulation over at most a few hundred tokens stay within ~1e-6 of float64.
F32_TOL = 1e-5
# bfloat16: probabilities are rounded to bf16 (8-bit mantissa, relative step 2^-8) before the PV product, so
# the output is off by up to ~2^-8 of its scale; 2^-7 leaves a factor 2. Scores stay f32, so lse keeps F32_TOL.
BF16_TOL = 2.0 ** -7
HUGE = 1e30


@dataclasses.dataclass(frozen=True)
class Case:
    """One random problem: numpy inputs (already rounded to dtype), with caches poisoned where unread."""
    q: np.ndarray        # [R, Hkv, rows, D]
    k: np.ndarray        # [L, Hkv, P, page_size, D], poisoned
    v: np.ndarray
    clean_k: np.ndarray  # the same caches with random values everywhere
    clean_v: np.ndarray
    layer: int
    pages: np.ndarray    # int32 [R, Hkv, S]
    lo: np.ndarray
    hi: np.ndarray
    count: np.ndarray    # int32 [R, Hkv]
    dtype: jnp.dtype

    def args(self, poisoned: bool = True) -> tuple:
        """The positional arguments of paged_decode_partials, as jax arrays."""
        cast = functools.partial(jnp.asarray, dtype=self.dtype)
        k, v = (self.k, self.v) if poisoned else (self.clean_k, self.clean_v)
        return (cast(self.q), cast(k), cast(v), jnp.int32(self.layer),
                *(jnp.asarray(a) for a in (self.pages, self.lo, self.hi, self.count)))


def make_case(seed: int, rows: int, dtype, *, r: int = 2, hkv: int = 3, d: int = 32, num_layers: int = 2,
              num_pages: int = 20, page_size: int = 16, num_entries: int = 6) -> Case:
    """Random lists: counts 0..S (both ends forced), lo > 0 on some entries, hi < page_size on each last entry,
    some empty ranges, and one (r, h) whose listed entries are all empty. Entries beyond count point at the
    last 4 pages, which are never listed (so poisoned)."""
    rng = np.random.default_rng(seed)
    round_to = lambda a: np.asarray(jnp.asarray(a, dtype), np.float64)
    q = round_to(rng.normal(size=(r, hkv, rows, d)) * 2)
    k = round_to(rng.normal(size=(num_layers, hkv, num_pages, page_size, d)))
    v = round_to(rng.normal(size=(num_layers, hkv, num_pages, page_size, d)))
    listable = num_pages - 4
    pages = np.stack([[rng.permutation(listable)[:num_entries] for _ in range(hkv)] for _ in range(r)])
    lo = np.where(rng.random(pages.shape) < 0.3, rng.integers(1, page_size, pages.shape), 0)
    hi = np.full(pages.shape, page_size)
    count = rng.integers(0, num_entries + 1, (r, hkv))
    count[0, 0], count[-1, -1], count[0, -1] = num_entries, 0, 1
    for i, j in np.ndindex(r, hkv):
        if count[i, j]:
            last = count[i, j] - 1
            hi[i, j, last] = rng.integers(lo[i, j, last], page_size)  # may equal lo: an empty entry
        pages[i, j, count[i, j]:] = rng.integers(listable, num_pages, num_entries - count[i, j])
        lo[i, j, count[i, j]:] = rng.integers(0, page_size, num_entries - count[i, j])
    hi[-1, 0, :] = lo[-1, 0, :]  # every listed entry of this (r, h) is empty
    layer = 1  # layer 0 is all NaN: reading it instead would show
    as_int = lambda a: np.asarray(a, np.int32)
    pages, lo, hi, count = as_int(pages), as_int(lo), as_int(hi), as_int(count)
    return Case(q, *_poison(k, v, layer, pages, lo, hi, count), k, v, layer, pages, lo, hi, count, dtype)


def _poison(k, v, layer, pages, lo, hi, count) -> tuple[np.ndarray, np.ndarray]:
    """Copies with K = HUGE, V = NaN on each slot of `layer` that no listed entry attends; NaN on other layers."""
    used = np.zeros(k.shape[1:4], bool)  # [Hkv, P, page_size]
    for i, h in np.ndindex(count.shape):
        for j in range(count[i, h]):
            used[h, pages[i, h, j], lo[i, h, j]:hi[i, h, j]] = True
    poisoned_k, poisoned_v = np.full_like(k, np.nan), np.full_like(v, np.nan)
    poisoned_k[layer] = np.where(used[..., None], k[layer], HUGE)
    poisoned_v[layer] = np.where(used[..., None], v[layer], np.nan)
    return poisoned_k, poisoned_v


def numpy_partials(case: Case, num_splits: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 (o [R, Hkv, splits, rows, D], lse [R, Hkv, splits, rows]) by gathering each split's tokens."""
    r, hkv, rows, d = case.q.shape
    o = np.zeros((r, hkv, num_splits, rows, d))
    lse = np.full((r, hkv, num_splits, rows), -np.inf)
    for i, h in np.ndindex(r, hkv):
        per_split = -(-case.count[i, h] // num_splits)
        for s in range(num_splits):
            entries = range(s * per_split, min((s + 1) * per_split, case.count[i, h]))
            slots = [(case.pages[i, h, j], t) for j in entries for t in range(case.lo[i, h, j], case.hi[i, h, j])]
            if not slots:
                continue
            keys = np.stack([case.k[case.layer, h, p, t] for p, t in slots])
            values = np.stack([case.v[case.layer, h, p, t] for p, t in slots])
            scores = case.q[i, h] @ keys.T / np.sqrt(d)
            m = scores.max(-1, keepdims=True)
            e = np.exp(scores - m)
            lse[i, h, s] = (m + np.log(e.sum(-1, keepdims=True)))[:, 0]
            o[i, h, s] = e / e.sum(-1, keepdims=True) @ values
    return o, lse


def numpy_merge(o: np.ndarray, lse: np.ndarray) -> np.ndarray:
    """float64 merge of the split axis 2."""
    m = lse.max(2, keepdims=True)
    w = np.where(np.isfinite(lse), np.exp(lse - np.where(np.isfinite(m), m, 0)), 0.0)
    return (w[..., None] * o).sum(2) / np.maximum(w.sum(2), 1e-300)[..., None]


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected|: the error relative to the output's scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _tolerance(dtype) -> float:
    return F32_TOL if dtype == jnp.float32 else BF16_TOL


def _partials(case: Case, implementation: str, num_splits: int, poisoned: bool = True):
    fn = functools.partial(paged_decode_partials, num_splits=num_splits, implementation=implementation,
                           interpret=True)
    return tuple(np.asarray(a) for a in jax.jit(fn)(*case.args(poisoned)))


# (rows, num_splits, dtype): GQA groups 1..8 and a cascade-like 24 rows (> 16, not a power of two).
CASES = [(1, 1, jnp.float32), (2, 3, jnp.bfloat16), (4, 1, jnp.bfloat16), (8, 3, jnp.float32),
         (24, 3, jnp.bfloat16), (24, 1, jnp.float32)]


@pytest.mark.parametrize("rows,num_splits,dtype", CASES)
@pytest.mark.parametrize("implementation", KERNELS)
def test_kernel_partials_match_float64_and_reference(implementation, rows, num_splits, dtype):
    case = make_case(seed=rows * 7 + num_splits, rows=rows, dtype=dtype)
    o, lse = _partials(case, implementation, num_splits)
    ref_o, ref_lse = _partials(case, "xla", num_splits)
    exact_o, exact_lse = numpy_partials(case, num_splits)
    tol = _tolerance(dtype)

    assert np.all(np.isfinite(o)) and not np.any(np.isnan(lse))
    assert rel_err(o, exact_o) <= tol and rel_err(o, ref_o) <= tol
    np.testing.assert_allclose(lse, exact_lse, rtol=F32_TOL, atol=F32_TOL)  # equal -inf where no tokens
    np.testing.assert_allclose(lse, ref_lse, rtol=F32_TOL, atol=F32_TOL)
    empty = exact_lse == -np.inf
    assert empty[-1, -1].all() and empty[-1, 0].all()  # count == 0, and all listed entries empty
    assert np.all(o[empty] == 0.0)
    merged, _ = merge_partials(jnp.asarray(o), jnp.asarray(lse), axis=2)
    assert rel_err(merged, numpy_merge(exact_o, exact_lse)) <= tol
    assert np.all(np.asarray(merged)[-1, -1] == 0.0) and np.all(np.asarray(merged)[-1, 0] == 0.0)


@pytest.mark.parametrize("rows,num_splits,dtype", CASES)
def test_reference_matches_float64(rows, num_splits, dtype):
    case = make_case(seed=rows * 7 + num_splits, rows=rows, dtype=dtype)
    o, lse = _partials(case, "xla", num_splits)
    exact_o, exact_lse = numpy_partials(case, num_splits)
    assert rel_err(o, exact_o) <= _tolerance(dtype)
    np.testing.assert_allclose(lse, exact_lse, rtol=F32_TOL, atol=F32_TOL)


@pytest.mark.parametrize("implementation", KERNELS)
def test_poison_does_not_change_the_output(implementation):
    """Bit-identical partials whether the unread pages, slots and layers hold random values or NaN / HUGE."""
    case = make_case(seed=3, rows=4, dtype=jnp.bfloat16)
    clean = _partials(case, implementation, num_splits=3, poisoned=False)
    for clean_part, poisoned_part in zip(clean, _partials(case, implementation, num_splits=3)):
        np.testing.assert_array_equal(clean_part, poisoned_part)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_mosaic_fetches_each_listed_page_once_and_nothing_else(num_splits):
    """Walk the Mosaic grid's page index_map in grid order: a DMA happens when the block index changes, so
    there must be exactly max(count, 1) of them, all of listed pages (entry 0's page when count == 0)."""
    num_entries, hkv = 7, 1
    pages = np.arange(8 * num_entries, dtype=np.int32).reshape(8, hkv, num_entries) + 100  # distinct ids
    count = np.arange(8, dtype=np.int32).reshape(8, hkv)                                     # 0..7 = 0..S
    refs = [jnp.ones(1, jnp.int32), jnp.asarray(pages.reshape(-1)), None, None, jnp.asarray(count.reshape(-1))]
    index_map = functools.partial(mosaic_tpu.page_index_map, hkv=hkv, num_splits=num_splits, num_entries=num_entries)
    steps = -(-num_entries // num_splits)
    for r in range(8):
        fetched = [int(index_map(r, 0, s, 0, j, *refs)[2]) for s in range(num_splits) for j in range(steps)]
        dmas = [page for i, page in enumerate(fetched) if i == 0 or page != fetched[i - 1]]
        assert dmas == list(pages[r, 0, :max(count[r, 0], 1)])


def test_paged_decode_default_implementation_on_cpu():
    """implementation=None on CPU runs the Triton kernel in interpret mode; the output keeps q's dtype."""
    case = make_case(seed=5, rows=2, dtype=jnp.bfloat16)
    out = paged_decode(*case.args(), num_splits=3)
    assert out.dtype == jnp.bfloat16 and out.shape == case.q.shape
    exact = numpy_merge(*numpy_partials(case, 1))
    # one more bf16 rounding of the output (2^-9) on top of the probabilities' 2^-8
    assert rel_err(out, exact) <= BF16_TOL
    assert np.all(np.asarray(out, np.float32)[-1, -1] == 0.0)


def test_merge_of_two_disjoint_lists_equals_the_union():
    """The cascade use: partials of a shared prefix list and of a suffix list merge into attention over both."""
    case = make_case(seed=11, rows=8, dtype=jnp.float32)
    cut = case.count // 2
    shift = np.arange(case.pages.shape[-1])[None, None, :] + cut[..., None]
    suffix = lambda a: np.take_along_axis(a, np.minimum(shift, a.shape[-1] - 1), axis=-1)
    prefix_case = dataclasses.replace(case, count=cut)
    suffix_case = dataclasses.replace(case, pages=suffix(case.pages), lo=suffix(case.lo), hi=suffix(case.hi),
                                      count=case.count - cut)
    o_prefix, lse_prefix = _partials(prefix_case, "triton", num_splits=1)
    o_suffix, lse_suffix = _partials(suffix_case, "mosaic", num_splits=2)
    out, lse = merge_partials(jnp.concatenate([o_prefix, o_suffix], 2), jnp.concatenate([lse_prefix, lse_suffix], 2),
                              axis=-2)
    exact_o, exact_lse = numpy_partials(case, 1)
    assert rel_err(out, exact_o[:, :, 0]) <= F32_TOL
    np.testing.assert_allclose(lse, exact_lse[:, :, 0], rtol=F32_TOL, atol=F32_TOL)


def test_merge_of_only_empty_partials_is_zero_without_nan():
    o = jnp.zeros((2, 3, 4, 8))
    out, lse = merge_partials(o, jnp.full((2, 3, 4), -jnp.inf), axis=1)
    assert np.all(np.asarray(out) == 0.0) and np.all(np.asarray(lse) == -np.inf)


# --- lowering at real Qwen3 shapes (head_dim 128, bfloat16, Hkv = 8) --------------------------------------------

R, HKV, LAYERS, POOL_PAGES, ENTRIES, HEAD_DIM = 4, 8, 2, 256, 70, 128
# (rows, page_size): GQA groups 2..16, one larger page, and a cascade group of 8 samples x 8 query heads.
LOWERING_SHAPES = [(2, 16), (4, 16), (8, 16), (16, 16), (8, 64), (64, 16)]


def _abstract_args(rows: int, page_size: int, dtype=jnp.bfloat16) -> list[jax.ShapeDtypeStruct]:
    sds = jax.ShapeDtypeStruct
    cache = sds((LAYERS, HKV, POOL_PAGES, page_size, HEAD_DIM), dtype)
    lists = sds((R, HKV, ENTRIES), jnp.int32)
    return [sds((R, HKV, rows, HEAD_DIM), dtype), cache, cache, sds((), jnp.int32), lists, lists, lists,
            sds((R, HKV), jnp.int32)]


def _export_cuda(rows: int, page_size: int, num_splits: int = 4) -> str:
    fn = functools.partial(paged_decode, implementation="triton", num_splits=num_splits)
    return export_mlir(fn, "cuda", *_abstract_args(rows, page_size))


def _export_tpu(rows: int, page_size: int, num_splits: int = 4, dtype=jnp.bfloat16) -> str:
    fn = functools.partial(paged_decode, implementation="mosaic", num_splits=num_splits)
    return export_mlir(fn, "tpu", *_abstract_args(rows, page_size, dtype))


@pytest.mark.parametrize("rows,page_size", LOWERING_SHAPES)
def test_triton_lowers_for_cuda(rows, page_size):
    assert "__gpu$xla.gpu.triton" in _export_cuda(rows, page_size)


@pytest.mark.parametrize("rows,page_size", LOWERING_SHAPES)
def test_mosaic_lowers_for_tpu(rows, page_size):
    assert "tpu_custom_call" in _export_tpu(rows, page_size)


def test_mosaic_lowers_for_tpu_float32():
    assert "tpu_custom_call" in _export_tpu(8, 16, num_splits=1, dtype=jnp.float32)


@pytest.mark.parametrize("page_size", [8, 24])
def test_triton_lowering_rejects_bad_page_size(page_size):
    with pytest.raises(ValueError, match="page_size"):
        _export_cuda(4, page_size)


def test_triton_lowering_really_runs(monkeypatch):
    """A 24-row block (not a power of two) passes the wrapper but must be refused by the Pallas->Triton lowering."""
    monkeypatch.setattr(triton, "MAX_BLOCK_ROWS", 24)
    with pytest.raises(Exception, match="power of 2"):
        _export_cuda(32, 16)


def test_mosaic_lowering_really_runs(monkeypatch):
    """A 12-row block (not a multiple of 8 sublanes) must be refused by the Pallas->Mosaic lowering."""
    monkeypatch.setattr(mosaic_tpu, "MAX_BLOCK_ROWS", 12)
    with pytest.raises(Exception, match="divisible by 8"):
        _export_tpu(24, 16)
