"""Decode attention as the engine runs it: a policy's page list, read by the XLA reference or a Pallas kernel.

    out, attended = decode_attention(q, cache, layer, page_table, lengths, config, page_offset=...)

- dense layers (kind "dense", and the layers in config.dense_layers) read every page; with the Pallas backend
  and N > 1 samples per prompt they use the shared-prefix (cascade) form: the N samples' queries read the
  shared prompt pages together, once per step, and their own pages separately; the two partial softmaxes are
  merged by log-sum-exp.
- block_topk and sliding_window build a `PageList` in XLA (selection.py) and read only those pages. While every
  sequence is below the policy's activation threshold the step is dense: nothing is scored, and the cascade
  reads shared prompt pages once.
- topk is the oracle: it scores every cached key, so it always runs in XLA on the gathered pages.

`sparse_decode` is the same thing for contiguous K/V [B, T, Hkv, D], for users and tests without a cache.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kinetics_jax.attention import selection
from kinetics_jax.attention.policies import AttentionConfig
from kinetics_jax.attention.reference import keep_mask, masked_attention
from kinetics_jax.cache import KVCache
from pallas_kernels.paged_decode import ops as kernels

# Programs the Pallas grid should offer a GPU (about two per SM of an H100/H200), when splitting the page list.
_TARGET_PROGRAMS = 256
_MIN_PAGES_PER_SPLIT = 8


def _implementation(config: AttentionConfig) -> str | None:
    return "xla" if config.backend == "xla" else None  # None: the kernel for this platform


def _num_splits(rows: int, kv_heads: int, entries: int, config: AttentionConfig) -> int:
    """Flash-decoding split count for the Pallas kernel: enough programs to fill a GPU, each with a few pages
    (1 for the XLA reference and off GPU)."""
    if config.backend == "xla" or jax.default_backend() != "gpu":
        return 1
    want = _TARGET_PROGRAMS // max(rows * kv_heads, 1)
    return max(1, min(want, entries // _MIN_PAGES_PER_SPLIT))


def _read(q: jax.Array, cache: KVCache, layer: jax.Array, pages: selection.PageList, config: AttentionConfig
          ) -> jax.Array:
    """q [B, Hq, D] attends the listed pages -> [B, Hq, D]."""
    b, hq, d = q.shape
    hkv = cache.k.shape[1]
    out = kernels.paged_decode(q.reshape(b, hkv, hq // hkv, d), cache.k, cache.v, layer, *pages,
                               num_splits=_num_splits(b, hkv, pages.pages.shape[-1], config),
                               implementation=_implementation(config))
    return out.reshape(b, hq, d)


def _cascade(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
             shared_pages: jax.Array, num_samples: int, page_offset: int, config: AttentionConfig) -> jax.Array:
    """Dense attention for B = P x N sequences whose first shared_pages[p] page-table entries are shared."""
    b, hq, d = q.shape
    hkv, ps = cache.k.shape[1], cache.page_size
    group, prompts = hq // hkv, b // num_samples
    impl = _implementation(config)
    # Shared prompt pages: the N samples' query groups of a prompt are the rows of one program.
    q_shared = q.reshape(prompts, num_samples, hkv, group, d).transpose(0, 2, 1, 3, 4)
    q_shared = q_shared.reshape(prompts, hkv, num_samples * group, d)
    shared_end = shared_pages * ps
    shared = selection.dense_pages(page_table[::num_samples], shared_end - page_offset, hkv, ps, page_offset)
    o1, lse1 = kernels.paged_decode_partials(q_shared, cache.k, cache.v, layer, *shared,
                                             num_splits=_num_splits(prompts, hkv, shared.pages.shape[-1], config),
                                             implementation=impl)
    splits = o1.shape[2]
    o1 = o1.reshape(prompts, hkv, splits, num_samples, group, d).transpose(0, 3, 1, 2, 4, 5)
    o1 = o1.reshape(b, hkv, splits, group, d)
    lse1 = lse1.reshape(prompts, hkv, splits, num_samples, group).transpose(0, 3, 1, 2, 4)
    lse1 = lse1.reshape(b, hkv, splits, group)
    # Each sample's own pages.
    first_own = jnp.maximum(jnp.repeat(shared_end, num_samples), page_offset)
    own = selection.dense_pages(page_table, lengths, hkv, ps, page_offset, first_token=first_own)
    o2, lse2 = kernels.paged_decode_partials(q.reshape(b, hkv, group, d), cache.k, cache.v, layer, *own,
                                             num_splits=_num_splits(b, hkv, own.pages.shape[-1], config),
                                             implementation=impl)
    out, _ = kernels.merge_partials(jnp.concatenate([o1, o2], axis=2), jnp.concatenate([lse1, lse2], axis=2),
                                    axis=2)
    return out.reshape(b, hq, d).astype(q.dtype)


def _oracle_topk(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
                 config: AttentionConfig) -> tuple[jax.Array, jax.Array]:
    """The oracle reads every cached key: gather the pages, then apply the reference policy."""
    k, v = _tokens(cache.k, layer, page_table), _tokens(cache.v, layer, page_table)
    keep = keep_mask(q, k, lengths, config)
    return masked_attention(q, k, v, keep), jnp.sum(keep[:, 0], axis=-1, dtype=jnp.int32)


def _tokens(pool: jax.Array, layer: jax.Array, page_table: jax.Array) -> jax.Array:
    """pool [L, Hkv, P, ps, D] -> the tokens of each page-table row [B, M * ps, Hkv, D] (page_offset 0)."""
    pages = pool[layer, :, page_table]  # [B, M, Hkv, ps, D]
    b, m, hkv, ps, d = pages.shape
    return pages.transpose(0, 1, 3, 2, 4).reshape(b, m * ps, hkv, d)


def _inactive(lengths: jax.Array, config: AttentionConfig) -> jax.Array:
    """bool[B]: the policy attends every cached token (it is below its activation threshold)."""
    if config.kind == "block_topk":
        return selection.full_blocks(lengths, config) <= config.block_topk
    return lengths <= config.budget


def decode_attention(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
                     config: AttentionConfig, *, page_offset: int, num_samples: int = 1,
                     shared_pages: jax.Array | None = None, head_mean: selection.HeadMean | None = None
                     ) -> tuple[jax.Array, jax.Array]:
    """One decode step of one layer for B sequences.

    q [B, Hq, D] (rotated); cache: pools [L, Hkv, P, ps, D] (the current token already appended); layer: int32
    scalar; page_table int32[B, M]; lengths int32[B] (cached tokens, the current one included); page_offset:
    the cache's empty leading slots (config.page_offset of the cache's policy); num_samples, shared_pages
    int32[P]: B = P x num_samples sequences whose first shared_pages[p] entries are shared (enables the
    cascade; None: nothing shared); head_mean: when the query heads of a KV head are split over devices, the
    function that completes group means (distributed.kv_head_mean; block selection uses it). Returns (out
    [B, Hq, D], KV tokens attended int32[B]).
    """
    if head_mean is not None and config.kind == "topk":
        raise ValueError("the oracle topk scores every key with the whole query group; it needs a 'model' mesh "
                         "axis that divides the KV heads")
    hkv, ps = cache.k.shape[1], cache.page_size

    def dense(q):
        if config.backend == "pallas" and num_samples > 1 and shared_pages is not None:
            out = _cascade(q, cache, layer, page_table, lengths, shared_pages, num_samples, page_offset, config)
        else:
            out = _read(q, cache, layer, selection.dense_pages(page_table, lengths, hkv, ps, page_offset), config)
        return out, lengths.astype(jnp.int32)

    def sparse(q):
        if config.kind == "topk":
            return _oracle_topk(q, cache, layer, page_table, lengths, config)
        if config.kind == "sliding_window":
            pages = selection.sliding_window_pages(page_table, lengths, hkv, config)
        else:
            pages = selection.block_topk_pages(q, cache, layer, page_table, lengths, config, head_mean)
        return _read(q, cache, layer, pages, config), pages.tokens()[:, 0]

    def policy(q):
        if config.kind == "topk":
            return sparse(q)
        # Below its threshold a policy is dense: while no sequence is past it, skip the selection (no block is
        # scored) and read densely, through the cascade when samples share prompt pages.
        return jax.lax.cond(jnp.all(_inactive(lengths, config)), dense, sparse, q)

    if not config.sparse:
        return dense(q)
    if not config.dense_layers:
        return policy(q)
    return jax.lax.cond(jnp.isin(layer, jnp.asarray(config.dense_layers)), dense, policy, q)


def sparse_decode(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, config: AttentionConfig,
                  backend: str | None = None) -> jax.Array:
    """One decode step of `config`'s policy over contiguous KV, through the engine's selection and kernels.

    q [B, Hq, D] (rotated), k, v [B, T, Hkv, D], lengths int32[B] (tokens 0 .. length-1 are attended, the others
    ignored); backend "xla" | "pallas" overrides config.backend (on CPU the kernels run in interpret mode).
    The K/V are first laid out as a one-layer paged cache with its page summaries (a copy: this form is for
    convenience and tests; the engine's cache is paged from the start). Returns [B, Hq, D] in q's dtype.
    """
    config = dataclasses.replace(config, backend=backend or config.backend, dense_layers=())  # one layer
    cache, table = paged_from_contiguous(k, v, lengths, config)
    out, _ = decode_attention(q, cache, jnp.int32(0), table, lengths.astype(jnp.int32), config,
                              page_offset=config.page_offset)
    return out


def paged_from_contiguous(k: jax.Array, v: jax.Array, lengths: jax.Array, config: AttentionConfig
                          ) -> tuple[KVCache, jax.Array]:
    """Lays k, v [B, T, Hkv, D] out as a one-layer cache with config's page size and offset, summaries
    included (tokens at or past lengths[b] are dropped). Returns (cache, page_table int32[B, M]): sequence b
    owns pages b * M .. b * M + M - 1."""
    b, t, hkv, d = k.shape
    ps, offset = config.block_size, config.page_offset
    width = -(-(offset + t) // ps)
    pad = ((0, 0), (offset, width * ps - offset - t))
    slot_valid = jnp.pad(jnp.arange(t)[None, :] < lengths[:, None], pad)  # [B, M * ps] in virtual order

    def paged(x: jax.Array, fill) -> jax.Array:  # [B, T, Hkv, D] -> [1, Hkv, B * M, ps, D]
        x = jnp.where(slot_valid[:, :, None, None], jnp.pad(x, pad + ((0, 0), (0, 0))), fill)
        return x.reshape(b, width, ps, hkv, d).transpose(3, 0, 1, 2, 4).reshape(1, hkv, b * width, ps, d)

    k32 = k.astype(jnp.float32)
    cache = KVCache(paged(k, 0), paged(v, 0), jnp.sum(paged(k32, 0.0), axis=3),
                    jnp.min(paged(k32, jnp.inf), axis=3) if config.uses_minmax else None,
                    jnp.max(paged(k32, -jnp.inf), axis=3) if config.uses_minmax else None)
    return cache, jnp.arange(b * width, dtype=jnp.int32).reshape(b, width)
