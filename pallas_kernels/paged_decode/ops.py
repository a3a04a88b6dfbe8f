"""Public page-list flash decode ops; the one place that picks an implementation.

Shapes (see reference.py for the full semantics):
  q [R, Hkv, rows, D]; k_cache, v_cache [L, Hkv, P, page_size, D] (q's dtype); layer int32 scalar;
  pages: a `PageList` (page ids [R, Hp, S], their blocks or None, entries [start, end) per list, token windows).

implementation: "triton" (GPU), "mosaic" (TPU), "xla" (XLA ops, work following the entries read), or None to
choose per lowering platform: cuda -> triton, tpu -> mosaic, cpu -> triton in interpret mode. `interpret` runs
an explicitly named Pallas implementation in interpret mode (how the tests run both kernels on CPU).
tile_tokens: tokens per loop iteration (None: the implementation's default; a tile holds tile_tokens //
page_size pages). A Mosaic-GPU kernel would be one more entry in _IMPLEMENTATIONS.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from pallas_kernels.paged_decode import mosaic_tpu, triton, xla
from pallas_kernels.paged_decode.reference import PageList


def _xla(*args, num_splits: int, tile_tokens: int | None, interpret: bool) -> tuple[jax.Array, jax.Array]:
    del interpret  # no meaning for XLA ops
    return xla.paged_decode_partials(*args, num_splits=num_splits, chunk_tokens=tile_tokens or xla.CHUNK_TOKENS)


def _triton(*args, num_splits: int, tile_tokens: int | None, interpret: bool) -> tuple[jax.Array, jax.Array]:
    return triton.paged_decode_partials(*args, num_splits=num_splits, interpret=interpret,
                                        tile_tokens=tile_tokens)


def _mosaic(*args, num_splits: int, tile_tokens: int | None, interpret: bool) -> tuple[jax.Array, jax.Array]:
    return mosaic_tpu.paged_decode_partials(*args, num_splits=num_splits, interpret=interpret,
                                            tile_tokens=tile_tokens or mosaic_tpu.TILE_TOKENS)


def tile_tokens_of(implementation: str | None, platform: str, dtype, tile_tokens: int | None = None) -> int:
    """KV tokens one loop iteration of the implementation reads (None implementation: the one `platform`'s
    lowering picks) over pools of `dtype`: a list shorter than this costs a whole iteration all the same."""
    name = implementation or ("mosaic" if platform == "tpu" else "triton")
    if tile_tokens:
        return tile_tokens
    if name == "xla":
        return xla.CHUNK_TOKENS
    return mosaic_tpu.TILE_TOKENS if name == "mosaic" else triton.launch(dtype, 1).tile_tokens


_IMPLEMENTATIONS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "triton": _triton,
    "mosaic": _mosaic,
    "xla": _xla,
}
IMPLEMENTATIONS = tuple(_IMPLEMENTATIONS)


def paged_decode_partials(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                          pages: PageList, *, num_splits: int, implementation: str | None = None,
                          tile_tokens: int | None = None, interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Per-split partials (o float32 [R, Hkv, num_splits, rows, D], lse float32 [R, Hkv, num_splits, rows]).

    Split s covers list entries [start + s c, min(start + (s + 1) c, end)) with c = ceil((end - start) /
    num_splits); an empty split gives o = 0 and lse = -inf. implementation None lowers per target platform
    (lax.platform_dependent), so a function exported or compiled for a platform carries that platform's kernel.
    """
    as_int = lambda a: None if a is None else jnp.asarray(a, jnp.int32)
    pages = PageList(*(as_int(a) for a in pages))
    layer = jnp.asarray(layer, jnp.int32)
    kw = dict(num_splits=num_splits, tile_tokens=tile_tokens)
    if implementation is None:
        branch = lambda name, interp: functools.partial(_IMPLEMENTATIONS[name], interpret=interp, **kw)
        return jax.lax.platform_dependent(q, k_cache, v_cache, layer, pages, cpu=branch("triton", True),
                                          cuda=branch("triton", interpret), tpu=branch("mosaic", interpret))
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; expected one of {sorted(_IMPLEMENTATIONS)}")
    return _IMPLEMENTATIONS[implementation](q, k_cache, v_cache, layer, pages, interpret=interpret, **kw)


def merge_partials(o: jax.Array, lse: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Log-sum-exp combine of partials along `axis`: (out float32, lse float32), with `axis` removed.

    o is [..., D] with lse's shape plus a trailing D; `axis` indexes lse (negative counts from its end) and the
    same leading axis of o. Partials with lse = -inf are ignored; if all are, out = 0 and lse = -inf (no NaN).
    """
    axis = axis % lse.ndim
    m = jnp.max(lse, axis=axis, keepdims=True)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    w = jnp.exp(lse - m_safe)                                        # 0 for empty partials
    total = jnp.sum(w, axis=axis)
    out = jnp.sum(w[..., None] * o.astype(jnp.float32), axis=axis) / jnp.where(total > 0, total, 1.0)[..., None]
    return out, jnp.squeeze(m_safe, axis) + jnp.log(total)


@functools.partial(jax.jit, static_argnames=("num_splits", "implementation", "tile_tokens", "interpret"))
def paged_decode(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array, pages: PageList, *,
                 num_splits: int = 1, implementation: str | None = None, tile_tokens: int | None = None,
                 interpret: bool = False) -> jax.Array:
    """Attention output [R, Hkv, rows, D] in q's dtype: the merge of the split partials (0 if no tokens)."""
    o, lse = paged_decode_partials(q, k_cache, v_cache, layer, pages, num_splits=num_splits,
                                   implementation=implementation, tile_tokens=tile_tokens, interpret=interpret)
    return merge_partials(o, lse, axis=2)[0].astype(q.dtype)
