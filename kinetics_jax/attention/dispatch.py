"""Decode attention as the engine runs it: a policy's page list, read by the XLA implementation or a Pallas kernel.

    out, attended = decode_attention(q, cache, layer, page_table, lengths, config)

- dense layers (kind "dense", and the layers in config.dense_layers) read every page; with N > 1 samples per
  prompt they use the shared-prefix (cascade) form: the N samples' queries read the shared prompt pages
  together, once per step, and their own pages separately; the two partial softmaxes are merged by log-sum-exp.
- a sparse policy's step is its own `Policy.decode` (kinetics_jax.policies), given a `LayerStep`: block top-k and
  the sliding window build a `PageList` in XLA and read only those pages, the oracle top-k scores every key.
  While every sequence is below the policy's activation threshold the step is dense (for the policies that
  say so, `skip_when_inactive`): nothing is scored, and the cascade reads shared prompt pages once.

Every path's work follows the cached lengths: the kernels and the XLA implementation loop over the entries read
with run-time trip counts, so a page table wider than the sequences costs nothing. `sparse_decode` is the same
thing for contiguous K/V [B, T, Hkv, D], for users and tests without a cache.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kinetics_jax.attention import selection
from kinetics_jax.cache import KVCache, PagedLayout
from kinetics_jax.policies import AttentionConfig
from pallas_kernels.paged_decode import PageList
from pallas_kernels.paged_decode import ops as kernels

# Programs the Pallas grid should offer a GPU (about two per SM of an H100/H200), when splitting the page list.
_TARGET_PROGRAMS = 256
_MIN_PAGES_PER_SPLIT = 8


def _implementation(config: AttentionConfig) -> str | None:
    return "xla" if config.backend == "xla" else None  # None: the kernel for the lowering platform


def _num_splits(rows: int, kv_heads: int, entries: int, config: AttentionConfig, platform: str) -> int:
    """Flash-decoding split count for the Pallas kernel on a GPU `platform`: enough programs to fill it, each
    with a few pages (1 for XLA, for TPU, whose grid of rows x heads already fills its cores, and off GPU)."""
    if config.backend == "xla" or platform not in ("gpu", "cuda", "rocm"):
        return 1
    want = _TARGET_PROGRAMS // max(rows * kv_heads, 1)
    return max(1, min(want, entries // _MIN_PAGES_PER_SPLIT))


def _partials(q: jax.Array, cache: KVCache, layer: jax.Array, pages: PageList, config: AttentionConfig,
              platform: str) -> tuple[jax.Array, jax.Array]:
    """q [R, Hkv, rows, D] over the listed pages -> per-split (o, lse)."""
    r, hkv = q.shape[:2]
    return kernels.paged_decode_partials(q, cache.k, cache.v, layer, pages,
                                         num_splits=_num_splits(r, hkv, pages.shape[-1], config, platform),
                                         implementation=_implementation(config), tile_tokens=config.tile_tokens)


def _read(q: jax.Array, cache: KVCache, layer: jax.Array, pages: PageList, config: AttentionConfig,
          platform: str) -> jax.Array:
    """q [B, Hq, D] attends the listed pages -> [B, Hq, D]."""
    b, hq, d = q.shape
    hkv = cache.k.shape[1]
    o, lse = _partials(q.reshape(b, hkv, hq // hkv, d), cache, layer, pages, config, platform)
    return kernels.merge_partials(o, lse, axis=2)[0].reshape(b, hq, d).astype(q.dtype)


def _cascade(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
             shared_pages: jax.Array, num_samples: int, page_offset: int, config: AttentionConfig,
             platform: str) -> jax.Array:
    """Dense attention for B = P x N sequences whose first shared_pages[p] page-table entries are shared."""
    b, hq, d = q.shape
    hkv, ps = cache.k.shape[1], cache.page_size
    group, prompts = hq // hkv, b // num_samples
    # Shared prompt pages: the N samples' query groups of a prompt are the rows of one program.
    q_shared = q.reshape(prompts, num_samples, hkv, group, d).transpose(0, 2, 1, 3, 4)
    q_shared = q_shared.reshape(prompts, hkv, num_samples * group, d)
    shared_end = shared_pages * ps
    shared = selection.dense_pages(page_table[::num_samples], shared_end - page_offset, ps, page_offset)
    o1, lse1 = _partials(q_shared, cache, layer, shared, config, platform)
    splits = o1.shape[2]
    o1 = o1.reshape(prompts, hkv, splits, num_samples, group, d).transpose(0, 3, 1, 2, 4, 5)
    o1 = o1.reshape(b, hkv, splits, group, d)
    lse1 = lse1.reshape(prompts, hkv, splits, num_samples, group).transpose(0, 3, 1, 2, 4)
    lse1 = lse1.reshape(b, hkv, splits, group)
    # Each sample's own pages.
    first_own = jnp.maximum(jnp.repeat(shared_end, num_samples), page_offset)
    own = selection.dense_pages(page_table, lengths, ps, page_offset, first_token=first_own)
    o2, lse2 = _partials(q.reshape(b, hkv, group, d), cache, layer, own, config, platform)
    out, _ = kernels.merge_partials(jnp.concatenate([o1, o2], axis=2), jnp.concatenate([lse1, lse2], axis=2),
                                    axis=2)
    return out.reshape(b, hq, d).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class LayerStep:
    """What a policy's sparse step (`Policy.decode`) reads for one layer: the cache (pools [L, Hkv, P, ps, D],
    the current token appended), layer (int32 scalar), page_table int32[B, M], lengths int32[B] (cached tokens,
    the current one included), num_samples / shared_pages int32[P] (B = P x num_samples rows whose first
    shared_pages[p] entries are the prompt's; None: nothing shared), head_mean (completes group means when a KV
    head's query group is split over devices), and `read`, which attends a page list with the config's kernel."""

    cache: KVCache
    layer: jax.Array
    page_table: jax.Array
    lengths: jax.Array
    num_samples: int
    shared_pages: jax.Array | None
    head_mean: selection.HeadMean | None
    config: AttentionConfig
    platform: str

    @property
    def page_size(self) -> int:
        return self.cache.page_size

    def read(self, q: jax.Array, pages: PageList) -> jax.Array:
        """q [B, Hq, D] attends the listed pages -> [B, Hq, D]."""
        return _read(q, self.cache, self.layer, pages, self.config, self.platform)


def decode_attention(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
                     config: AttentionConfig, *, num_samples: int = 1,
                     shared_pages: jax.Array | None = None, head_mean: selection.HeadMean | None = None,
                     platform: str | None = None) -> tuple[jax.Array, jax.Array]:
    """One decode step of one layer for B sequences.

    q [B, Hq, D] (rotated); cache: pools [L, Hkv, P, ps, D] (the current token already appended); layer: int32
    scalar; page_table int32[B, M]; lengths int32[B] (cached tokens, the current one included; the cache's
    pages are laid out with config.cache_page_size and config.page_offset); num_samples, shared_pages
    int32[P]: B = P x num_samples sequences whose first shared_pages[p] entries are shared (enables the
    cascade and the shared scoring of block top-k; None: nothing shared); head_mean: when the query heads of a
    KV head are split over devices, the function that completes group means (sharding.meshes.kv_head_mean; block
    selection uses it); platform: the compilation target ("gpu", "tpu", "cpu"; default: jax's default backend),
    which sets the kernel's split count. Returns (out [B, Hq, D], KV tokens attended int32[B]).
    """
    platform = platform or jax.default_backend()
    ps, page_offset, policy = cache.page_size, config.page_offset, config.policy

    def dense(q):
        if num_samples > 1 and shared_pages is not None:
            out = _cascade(q, cache, layer, page_table, lengths, shared_pages, num_samples, page_offset, config,
                           platform)
        else:
            out = _read(q, cache, layer, selection.dense_pages(page_table, lengths, ps, page_offset), config,
                        platform)
        return out, lengths.astype(jnp.int32)

    step = LayerStep(cache, layer, page_table, lengths, num_samples, shared_pages, head_mean, config, platform)

    def sparse(q):
        return policy.decode(q, step)

    def policy_step(q):
        if not policy.skip_when_inactive:
            return sparse(q)
        # Below its threshold a policy is dense: while no sequence is past it, skip the selection (no block is
        # scored) and read densely, through the cascade when samples share prompt pages.
        return _cond(lengths, lambda n: ~policy.active(n, jnp if isinstance(n, jax.Array) else np).any(),
                     dense, sparse, q)

    if not policy.sparse:
        return dense(q)
    if not config.dense_layers:
        return policy_step(q)
    return _cond(layer, lambda i: (i == np.asarray(config.dense_layers)).any(), dense, policy_step, q)


def _cond(value, predicate, true_fn, false_fn, *operands):
    """lax.cond(predicate(value), ...), or the branch itself when `value` is known while tracing (a numpy
    array or int: a layer index of unrolled layers, the lengths of a compile-time request): one branch is
    compiled, and XLA's cost analysis, which charges a conditional for its costlier branch, counts the one
    that runs."""
    if isinstance(value, (np.ndarray, np.generic, int)):
        return true_fn(*operands) if bool(predicate(np.asarray(value))) else false_fn(*operands)
    return jax.lax.cond(predicate(value), true_fn, false_fn, *operands)


def sparse_decode(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, config: AttentionConfig
                  ) -> jax.Array:
    """One decode step of `config`'s policy over contiguous KV, through the engine's selection and kernels.

    q [B, Hq, D] (rotated), k, v [B, T, Hkv, D], lengths int32[B] (tokens 0 .. length-1 are attended, the others
    ignored); config.backend "pallas" runs the kernels (in interpret mode on CPU).
    The K/V are first laid out as a one-layer paged cache with its page summaries (PagedLayout.from_contiguous,
    a copy: this form is for convenience and tests; the engine's cache is paged from the start). Returns
    [B, Hq, D] in q's dtype.
    """
    config = dataclasses.replace(config, dense_layers=())  # one layer
    cache, table = PagedLayout.of(config).from_contiguous(k[None], v[None], lengths)
    out, _ = decode_attention(q, cache, jnp.int32(0), table, lengths.astype(jnp.int32), config)
    return out
