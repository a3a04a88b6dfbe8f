"""Page-list flash decode (pallas_kernels.paged_decode): every implementation against float64 numpy and the spec.

The Triton and Mosaic kernels run in interpret mode on CPU; "xla" is the XLA implementation. Every case poisons
what must not be read: all other layers of the pool (NaN), and at the attended layer every slot that no listed
entry reads (K huge, V NaN), the pages of entries outside [start, end) and the slots outside the windows
included. Cases cover explicit lists (per KV head and shared) and contiguous page-table runs, 8- and 16-token
pages, tiles of one to several pages, and several splits. Compiling the kernels for TPU and GPU is in
test_compile_kernels.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.paged_decode import IMPLEMENTATIONS, PageList, merge_partials, paged_decode, reference
from pallas_kernels.paged_decode import paged_decode_partials

# jax 0.11 warns that Pallas Triton is deprecated (for Mosaic GPU); the project keeps it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")

# float32: f32 scores and accumulation over at most a few hundred tokens stay within ~1e-6 of float64.
F32_TOL = 1e-5
# bfloat16: probabilities are rounded to bf16 (8-bit mantissa, relative step 2^-8) before the PV product, so
# the output is off by up to ~2^-8 of its scale; 2^-7 leaves a factor 2. Scores stay f32, so lse keeps F32_TOL.
BF16_TOL = 2.0 ** -7
HUGE = 1e30
WIDTH = 10  # blocks per page table row


@dataclasses.dataclass(frozen=True)
class Case:
    """One random problem: numpy inputs (already rounded to dtype), with caches poisoned where unread."""
    q: np.ndarray        # [R, Hkv, rows, D]
    k: np.ndarray        # [L, Hkv, P, page_size, D], poisoned
    v: np.ndarray
    clean_k: np.ndarray  # the same caches with random values everywhere
    clean_v: np.ndarray
    layer: int
    table: np.ndarray    # int32 [R, W]
    blocks: np.ndarray | None  # int32 [R, Hp, S] or None (entry j is block j)
    start: np.ndarray    # int32 [R, Hp]
    end: np.ndarray
    window: np.ndarray   # int32 [R, 4]
    dtype: jnp.dtype

    def pages(self) -> PageList:
        as_int = lambda a: None if a is None else jnp.asarray(a, jnp.int32)
        return PageList(*(as_int(a) for a in (self.table, self.blocks, self.start, self.end, self.window)))

    def args(self, poisoned: bool = True) -> tuple:
        """The positional arguments of paged_decode_partials, as jax arrays."""
        cast = functools.partial(jnp.asarray, dtype=self.dtype)
        k, v = (self.k, self.v) if poisoned else (self.clean_k, self.clean_v)
        return cast(self.q), cast(k), cast(v), jnp.int32(self.layer), self.pages()

    def read(self) -> np.ndarray:
        """bool [R, Hkv, S, page_size]: the slots each list reads, from the definition."""
        r, hkv = self.q.shape[:2]
        page_size = self.k.shape[3]
        s = WIDTH if self.blocks is None else self.blocks.shape[-1]
        out = np.zeros((r, hkv, s, page_size), bool)
        for i, h in np.ndindex(r, hkv):
            hp = 0 if self.start.shape[1] == 1 else h
            w0, w1, w2, w3 = self.window[i]
            for e in range(self.start[i, hp], self.end[i, hp]):
                block = e if self.blocks is None else self.blocks[i, hp, e]
                position = block * page_size + np.arange(page_size)
                out[i, h, e] = ((position >= w0) & (position < w1)) | ((position >= w2) & (position < w3))
        return out

    def entry_page(self, i: int, h: int, e: int) -> int:
        hp = 0 if self.start.shape[1] == 1 else h
        return int(self.table[i, e if self.blocks is None else self.blocks[i, hp, e]])


def make_case(seed: int, rows: int, dtype, *, page_size: int = 16, shared_lists: bool = False,
              explicit: bool = True, r: int = 2, hkv: int = 3, d: int = 32, num_layers: int = 2,
              num_pages: int = 26, entries: int = 6) -> Case:
    """Random lists and windows: starts 0..2, ends up to the list length (a full list, an empty one and a
    single entry forced), windows that cut pages at both ends and a second range that makes a gap."""
    rng = np.random.default_rng(seed)
    round_to = lambda a: np.asarray(jnp.asarray(a, dtype), np.float64)
    q = round_to(rng.normal(size=(r, hkv, rows, d)) * 2)
    k = round_to(rng.normal(size=(num_layers, hkv, num_pages, page_size, d)))
    v = round_to(rng.normal(size=(num_layers, hkv, num_pages, page_size, d)))
    table = np.stack([rng.permutation(num_pages - 4)[:WIDTH] for _ in range(r)])  # the last 4 pages: never listed
    lists = 1 if shared_lists or not explicit else hkv
    s = entries if explicit else WIDTH
    blocks = np.stack([[rng.permutation(WIDTH)[:s] for _ in range(lists)] for _ in range(r)]) if explicit else None
    start = rng.integers(0, 3, (r, lists))
    end = np.maximum(start, rng.integers(1, s + 1, (r, lists)))
    start[0, 0], end[0, 0] = 0, s          # a full list
    start[-1, -1] = end[-1, -1] = 2        # an empty one
    start[0, -1], end[0, -1] = 1, 2        # a single entry
    span = WIDTH * page_size
    window = np.stack([[lo := rng.integers(0, page_size), rng.integers(lo + span // 3, span),
                        lo2 := rng.integers(span // 2, span), rng.integers(lo2, span + 1)] for _ in range(r)])
    window[-1, 2:] = 0  # one row with a single range
    layer = 1  # layer 0 is all NaN: reading it instead would show
    case = Case(q, k, v, k, v, layer, table.astype(np.int32), None if blocks is None else blocks.astype(np.int32),
                start.astype(np.int32), end.astype(np.int32), window.astype(np.int32), dtype)
    return dataclasses.replace(case, k=_poison(case, k, HUGE), v=_poison(case, v, np.nan))


def _poison(case: Case, x: np.ndarray, fill: float) -> np.ndarray:
    """x with `fill` on each slot of the case's layer that its lists do not read, NaN on the other layers."""
    read = case.read()
    used = np.zeros(x.shape[1:4], bool)  # [Hkv, P, page_size]
    for i, h, e in zip(*np.nonzero(read.any(-1))):
        used[h, case.entry_page(i, h, e)] |= read[i, h, e]
    out = np.full_like(x, np.nan)
    out[case.layer] = np.where(used[..., None], x[case.layer], fill)
    return out


def numpy_partials(case: Case, num_splits: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 (o [R, Hkv, splits, rows, D], lse [R, Hkv, splits, rows]) by gathering each split's tokens."""
    r, hkv, rows, d = case.q.shape
    read = case.read()
    o = np.zeros((r, hkv, num_splits, rows, d))
    lse = np.full((r, hkv, num_splits, rows), -np.inf)
    for i, h in np.ndindex(r, hkv):
        hp = 0 if case.start.shape[1] == 1 else h
        first, last = int(case.start[i, hp]), int(case.end[i, hp])
        per_split = -(-max(last - first, 0) // num_splits)
        for s in range(num_splits):
            entries = range(first + s * per_split, min(first + (s + 1) * per_split, last))
            slots = [(case.entry_page(i, h, e), t) for e in entries for t in np.nonzero(read[i, h, e])[0]]
            if not slots:
                continue
            keys = np.stack([case.clean_k[case.layer, h, p, t] for p, t in slots])
            values = np.stack([case.clean_v[case.layer, h, p, t] for p, t in slots])
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
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def _tolerance(dtype) -> float:
    return F32_TOL if dtype == jnp.float32 else BF16_TOL


def _partials(case: Case, implementation: str, num_splits: int, poisoned: bool = True, tile_tokens=None):
    fn = functools.partial(paged_decode_partials, num_splits=num_splits, implementation=implementation,
                           tile_tokens=tile_tokens, interpret=True)
    return tuple(np.asarray(a) for a in jax.jit(fn)(*case.args(poisoned)))


# (rows, num_splits, dtype, page_size, list form): GQA groups 1..8, a cascade-like 24 rows, 8-token pages.
CASES = [(1, 1, jnp.float32, 16, "per_head"), (2, 3, jnp.bfloat16, 16, "per_head"), (4, 1, jnp.bfloat16, 8, "shared"),
         (8, 3, jnp.float32, 8, "table_run"), (24, 2, jnp.bfloat16, 16, "table_run"), (4, 2, jnp.float32, 8, "per_head")]
FORMS = {"per_head": dict(), "shared": dict(shared_lists=True), "table_run": dict(explicit=False)}


@pytest.mark.parametrize("rows,num_splits,dtype,page_size,form", CASES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_partials_match_float64_and_the_spec(implementation, rows, num_splits, dtype, page_size, form):
    case = make_case(rows * 7 + num_splits, rows, dtype, page_size=page_size, **FORMS[form])
    exact_o, exact_lse = numpy_partials(case, num_splits)
    ref_o, ref_lse = (np.asarray(a) for a in reference.paged_decode_partials(*case.args(poisoned=False),
                                                                            num_splits=num_splits))
    tol = _tolerance(dtype)
    for tile_tokens in (16, 64):  # one page per tile, and several (8-token pages: 2 and 8)
        o, lse = _partials(case, implementation, num_splits, tile_tokens=tile_tokens)
        assert np.all(np.isfinite(o)) and not np.any(np.isnan(lse))
        assert rel_err(o, exact_o) <= tol and rel_err(o, ref_o) <= tol
        np.testing.assert_allclose(lse, exact_lse, rtol=F32_TOL, atol=F32_TOL)  # equal -inf where no tokens
        np.testing.assert_allclose(lse, ref_lse, rtol=F32_TOL, atol=F32_TOL)
        empty = exact_lse == -np.inf
        assert empty[-1, -1].all()  # the empty list
        assert np.all(o[empty] == 0.0)
        merged, _ = merge_partials(jnp.asarray(o), jnp.asarray(lse), axis=2)
        assert rel_err(merged, numpy_merge(exact_o, exact_lse)) <= tol


@pytest.mark.parametrize("rows,num_splits,dtype,page_size,form", CASES[:3])
def test_spec_matches_float64(rows, num_splits, dtype, page_size, form):
    case = make_case(rows * 7 + num_splits, rows, dtype, page_size=page_size, **FORMS[form])
    o, lse = (np.asarray(a) for a in reference.paged_decode_partials(*case.args(poisoned=False),
                                                                    num_splits=num_splits))
    exact_o, exact_lse = numpy_partials(case, num_splits)
    assert rel_err(o, exact_o) <= _tolerance(dtype)
    np.testing.assert_allclose(lse, exact_lse, rtol=F32_TOL, atol=F32_TOL)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_poison_does_not_change_the_output(implementation):
    """Bit-identical partials whether the unread pages, slots and layers hold random values or NaN / HUGE."""
    case = make_case(seed=3, rows=4, dtype=jnp.bfloat16, page_size=8)
    clean = _partials(case, implementation, num_splits=3, poisoned=False, tile_tokens=32)
    for clean_part, poisoned_part in zip(clean, _partials(case, implementation, num_splits=3, tile_tokens=32)):
        np.testing.assert_array_equal(clean_part, poisoned_part)


def test_xla_work_follows_the_entries_read_not_the_list():
    """The XLA implementation's loop runs ceil(longest split / chunk) iterations: with every list ending after 2
    entries, a chunk of one page gives the same result as a chunk covering the whole list (and nothing past the
    ends is read: the pages there are poisoned)."""
    case = make_case(seed=9, rows=4, dtype=jnp.float32, explicit=False)
    case = dataclasses.replace(case, start=np.zeros_like(case.start), end=np.full_like(case.end, 2))
    case = dataclasses.replace(case, k=_poison(case, case.clean_k, HUGE), v=_poison(case, case.clean_v, np.nan))
    one, whole = (_partials(case, "xla", 1, tile_tokens=t) for t in (16, 16 * WIDTH))
    np.testing.assert_allclose(one[0], whole[0], rtol=1e-6, atol=1e-6)
    assert rel_err(one[0], numpy_partials(case, 1)[0]) <= F32_TOL


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_xla_rows_do_not_depend_on_their_neighbours(dtype):
    """The XLA loop takes the rows that read something, longest first, in groups of ceil(R / 4): 10 rows (groups
    of 3, so one padded group) match float64, rows that read nothing give o = 0, lse = -inf, and a row's partials
    are bit-identical with its neighbours emptied (another group, another position in it)."""
    case = make_case(seed=5, rows=2, dtype=dtype, r=10)
    end = case.end.copy()
    end[[1, 4, 7]] = case.start[[1, 4, 7]]  # three rows that read nothing
    case = dataclasses.replace(case, end=end)
    case = dataclasses.replace(case, k=_poison(case, case.clean_k, HUGE), v=_poison(case, case.clean_v, np.nan))
    o, lse = _partials(case, "xla", 2)
    exact_o, exact_lse = numpy_partials(case, 2)
    assert rel_err(o, exact_o) <= _tolerance(dtype)
    np.testing.assert_allclose(lse, exact_lse, rtol=F32_TOL, atol=F32_TOL)
    assert np.all(lse[[1, 4, 7]] == -np.inf) and np.all(o[[1, 4, 7]] == 0.0)
    alone = end.copy()
    alone[np.arange(10) != 5] = case.start[np.arange(10) != 5]
    alone_o, alone_lse = _partials(dataclasses.replace(case, end=alone), "xla", 2)
    np.testing.assert_array_equal(alone_o[5], o[5])
    np.testing.assert_array_equal(alone_lse[5], lse[5])


def test_paged_decode_default_implementation_on_cpu():
    """implementation=None on CPU runs the Triton kernel in interpret mode; the output keeps q's dtype."""
    case = make_case(seed=5, rows=2, dtype=jnp.bfloat16)
    out = paged_decode(*case.args(), num_splits=3)
    assert out.dtype == jnp.bfloat16 and out.shape == case.q.shape
    # one more bf16 rounding of the output (2^-9) on top of the probabilities' 2^-8
    assert rel_err(out, numpy_merge(*numpy_partials(case, 1))) <= BF16_TOL
    assert np.all(np.asarray(out, np.float32)[-1, -1] == 0.0)


def test_merge_of_two_disjoint_lists_equals_the_union():
    """The cascade use: partials of a prefix of the lists and of the rest merge into attention over both."""
    case = make_case(seed=11, rows=8, dtype=jnp.float32)
    cut = (case.start + case.end) // 2
    head, tail = dataclasses.replace(case, end=cut), dataclasses.replace(case, start=cut)
    o_head, lse_head = _partials(head, "triton", num_splits=1, poisoned=False)
    o_tail, lse_tail = _partials(tail, "mosaic", num_splits=2, poisoned=False)
    out, lse = merge_partials(jnp.concatenate([o_head, o_tail], 2), jnp.concatenate([lse_head, lse_tail], 2),
                              axis=-2)
    exact_o, exact_lse = numpy_partials(case, 1)
    assert rel_err(out, exact_o[:, :, 0]) <= F32_TOL
    np.testing.assert_allclose(lse, exact_lse[:, :, 0], rtol=F32_TOL, atol=F32_TOL)


def test_merge_of_only_empty_partials_is_zero_without_nan():
    o = jnp.zeros((2, 3, 4, 8))
    out, lse = merge_partials(o, jnp.full((2, 3, 4), -jnp.inf), axis=1)
    assert np.all(np.asarray(out) == 0.0) and np.all(np.asarray(lse) == -np.inf)


def test_tpu_smem_budget_is_refused_with_the_numbers():
    from pallas_kernels.paged_decode import mosaic_tpu
    table = jnp.zeros((256, 2048), jnp.int32)  # 256 rows x 32K tokens of 16-token pages: 2 MiB of page table
    pages = PageList(table, None, jnp.zeros((256, 1), jnp.int32), jnp.ones((256, 1), jnp.int32),
                     jnp.zeros((256, 4), jnp.int32))
    with pytest.raises(ValueError, match="SMEM"):
        mosaic_tpu.check_smem(pages)
