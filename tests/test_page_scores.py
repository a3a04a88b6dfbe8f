"""Page scores from summaries (pallas_kernels.page_scores): the Mosaic kernel in interpret mode and the XLA
implementation against float64 numpy, and the entries outside [lo, hi) never read (their pages poisoned)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.page_scores import IMPLEMENTATIONS, scores

# float32 dot products of 32 channels: ~1e-6 relative; bf16 summaries are exact in f32 once rounded.
TOL = 1e-5


def _numpy(queries, summaries, layer, table, first, lo, hi, entries):
    r, n, hkv, _ = queries[0].shape
    out = np.full((r, n, hkv, entries), -np.inf)
    for i in range(r):
        for c in range(lo[i], hi[i]):
            page = table[i, first + c]
            out[i, :, :, c] = sum(np.einsum("nkd,kd->nk", q[i], s[layer, page]) for q, s in zip(queries, summaries))
    return out


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype,arrays", [(jnp.float32, 1), (jnp.bfloat16, 2)])
def test_scores_match_float64_and_skip_unread_entries(implementation, dtype, arrays):
    rng = np.random.default_rng(arrays)
    r, n, hkv, d, layers, pages, width, entries, first = 3, 2, 4, 32, 2, 40, 20, 8, 3
    queries = [rng.normal(size=(r, n, hkv, d)) for _ in range(arrays)]
    summaries = [np.asarray(jnp.asarray(rng.normal(size=(layers, pages, hkv, d)), dtype), np.float64)
                 for _ in range(arrays)]
    table = np.stack([rng.permutation(pages - 5)[:width] for _ in range(r)])
    lo, hi = np.array([0, 2, 5]), np.array([8, 3, 4])  # a whole chunk, one entry, none
    for i in range(r):  # unread entries point at never-read pages, which hold NaN
        for c in [c for c in range(entries) if not lo[i] <= c < hi[i]]:
            table[i, first + c] = pages - 1 - c % 5
    poisoned = [s.copy() for s in summaries]
    for s in poisoned:
        s[:, pages - 5:] = np.nan
        s[0] = np.nan  # another layer
    got = np.asarray(scores([jnp.asarray(q, jnp.float32) for q in queries], [jnp.asarray(s, dtype) for s in poisoned],
                            1, jnp.asarray(table), first, jnp.asarray(lo), jnp.asarray(hi), entries=entries,
                            implementation=implementation, interpret=True))
    expect = _numpy(queries, summaries, 1, table, first, lo, hi, entries)
    assert np.array_equal(np.isfinite(got), np.isfinite(expect))
    finite = np.isfinite(expect)
    np.testing.assert_allclose(got[finite], expect[finite], rtol=TOL, atol=TOL * np.abs(expect[finite]).max())
