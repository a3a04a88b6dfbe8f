"""In-place cache writes (pallas_kernels.paged_write): the Mosaic kernels in interpret mode (both the generic
interpreter and the TPU simulator, which models DMAs and semaphores) write exactly what the XLA scatters write,
and nothing else."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import paged_write

INTERPRETERS = [True, pltpu.InterpretParams()]
L, H, P, PS, D = 3, 2, 12, 8, 32


def _pools(rng, dtype):
    return (jnp.asarray(rng.normal(size=(L, H, P, PS, D)), dtype), jnp.asarray(rng.normal(size=(L, H, P, PS, D)), dtype))


@pytest.mark.parametrize("interpret", INTERPRETERS, ids=["interpret", "tpu_simulator"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_write_tokens(interpret, dtype):
    rng = np.random.default_rng(0)
    k_pool, v_pool = _pools(rng, dtype)
    rows = 21  # more than one kernel step, and a short last one
    pages = jnp.asarray(np.concatenate([rng.permutation(np.arange(1, P))[:9], np.zeros(rows - 9, int)]), jnp.int32)
    slots = jnp.asarray(rng.integers(0, PS, rows), jnp.int32)
    k, v = (jnp.asarray(rng.normal(size=(rows, H, D)), dtype) for _ in range(2))
    got = paged_write.write_tokens(k_pool, v_pool, 1, pages, slots, k, v, implementation="mosaic", interpret=interpret)
    want = paged_write.write_tokens(k_pool, v_pool, 1, pages, slots, k, v, implementation="xla")
    for g, w, new in zip(got, want, (k, v)):
        np.testing.assert_array_equal(np.asarray(g[:, :, 1:]), np.asarray(w[:, :, 1:]))  # the null page: anything
        np.testing.assert_array_equal(np.asarray(g[1, :, pages[:9], slots[:9]]), np.asarray(new[:9]))


@pytest.mark.parametrize("interpret", INTERPRETERS, ids=["interpret", "tpu_simulator"])
def test_write_pages_and_rows(interpret):
    rng = np.random.default_rng(1)
    k_pool, v_pool = _pools(rng, jnp.bfloat16)
    src = jnp.asarray(rng.normal(size=(5, H, PS, D)), jnp.bfloat16)
    dst, index = jnp.asarray([3, 4, 7, 9, 0, 0, 11], jnp.int32), jnp.asarray([0, 2, 2, 4, 0, 1, 3], jnp.int32)
    got = paged_write.write_pages(k_pool, v_pool, 2, dst, src, src + 1, index, implementation="mosaic",
                                  interpret=interpret)
    want = paged_write.write_pages(k_pool, v_pool, 2, dst, src, src + 1, index, implementation="xla")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g[:, :, 1:]), np.asarray(w[:, :, 1:]))
    summary = jnp.asarray(rng.normal(size=(L, P, H, D)), jnp.bfloat16)
    rows, x = jnp.asarray([3, 5, 0, 0, 9], jnp.int32), jnp.asarray(rng.normal(size=(5, H, D)), jnp.bfloat16)
    got = paged_write.write_rows(summary, 1, rows, x, implementation="mosaic", interpret=interpret)
    want = paged_write.write_rows(summary, 1, rows, x, implementation="xla")
    np.testing.assert_array_equal(np.asarray(got[:, 1:]), np.asarray(want[:, 1:]))


def test_unknown_implementation_is_refused():
    k_pool, v_pool = _pools(np.random.default_rng(2), jnp.float32)
    with pytest.raises(ValueError, match="implementation"):
        paged_write.write_tokens(k_pool, v_pool, 0, jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32),
                                 k_pool[0, :, 0, :1].swapaxes(0, 1), k_pool[0, :, 0, :1].swapaxes(0, 1),
                                 implementation="cuda")
