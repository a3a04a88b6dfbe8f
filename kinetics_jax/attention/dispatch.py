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
import functools

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


def min_shared_pages(config: AttentionConfig, platform: str, dtype, page_size: int) -> int:
    """The fewest full prompt pages worth a separate shared read (the cascade) on `platform`: one loop iteration
    of the kernel or XLA loop that reads them. Below that, the shared read costs an iteration of its own and
    saves none, so the continuous engine leaves such a prompt to each sample's own read."""
    tile = kernels.tile_tokens_of(_implementation(config), platform, dtype, config.tile_tokens)
    return max(1, -(-tile // page_size))


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


@functools.partial(jax.tree_util.register_dataclass, data_fields=["group", "position", "table_row", "pages"],
                   meta_fields=["width"])
@dataclasses.dataclass(frozen=True)
class SharedPrefix:
    """How rows that share a prompt's first pages are grouped to read them once per step: row i is at place
    position[i] (< width, static) of group group[i] (< G; G or more: no group); group g reads the first pages[g]
    entries of row table_row[g]'s page table (the prompt's pages, the same in every member's table). int32
    arrays group, position [B], table_row, pages [G]; under a mesh, rows and groups are split over "data"
    together and the ids are shard-local."""

    group: jax.Array
    position: jax.Array
    table_row: jax.Array
    pages: jax.Array
    width: int

    @staticmethod
    def of_samples(shared_pages: jax.Array, num_samples: int) -> "SharedPrefix":
        """The static batch's layout: B = P x num_samples rows, prompt p's samples in rows p N .. p N + N - 1,
        the first shared_pages[p] (int32[P]) entries of their tables the prompt's."""
        rows = jnp.arange(shared_pages.shape[0] * num_samples, dtype=jnp.int32)
        return SharedPrefix(rows // num_samples, rows % num_samples, rows[::num_samples],
                            shared_pages.astype(jnp.int32), num_samples)


def _cascade(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
             prefix: SharedPrefix, page_offset: int, config: AttentionConfig, platform: str) -> jax.Array:
    """Dense attention for B rows grouped by `prefix`: the query heads of a group's running rows are the rows
    of one program over the group's shared pages (read once), each row then reads its own pages after them;
    the two partial softmaxes are merged by log-sum-exp. A group with no running row reads nothing; while no
    group reads shared pages, the step is one plain dense read (the same numbers: an empty shared partial adds
    exact zeros to the merge). A row's result depends on its own query and pages only, not on the other rows of
    its group."""
    b = q.shape[0]
    ps, n, g = cache.page_size, prefix.width, prefix.pages.shape[0]
    joined = jnp.where(lengths > 0, prefix.group, g)  # a row that does not run joins no group
    members = jnp.full((g, n), b, jnp.int32).at[joined, prefix.position].set(jnp.arange(b, dtype=jnp.int32),
                                                                            mode="drop")
    live = jnp.zeros((g,), bool).at[joined].set(True, mode="drop") & (prefix.pages > 0)
    plain = lambda q: _read(q, cache, layer, selection.dense_pages(page_table, lengths, ps, page_offset), config,
                            platform)
    split = lambda q: _split_read(q, cache, layer, page_table, lengths, prefix, members, live, page_offset, config,
                                  platform)
    return _cond(live, lambda live: live.any(), split, plain, q)


def _split_read(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
                prefix: SharedPrefix, members: jax.Array, live: jax.Array, page_offset: int,
                config: AttentionConfig, platform: str) -> jax.Array:
    """_cascade's two reads: each live group's shared pages for its members' queries (members int32[G, width],
    B: an empty place), then every row's own pages; merged by log-sum-exp."""
    b, hq, d = q.shape
    hkv, ps = cache.k.shape[1], cache.page_size
    group, n, g = hq // hkv, prefix.width, prefix.pages.shape[0]
    # Shared prompt pages: a group's query groups, by place (an empty place: zero queries), in one program.
    q4 = jnp.concatenate([q.reshape(b, hkv, group, d), jnp.zeros((1, hkv, group, d), q.dtype)])
    q_shared = q4[members].transpose(0, 2, 1, 3, 4).reshape(g, hkv, n * group, d)
    shared_end = jnp.where(live, prefix.pages, 0) * ps
    shared = selection.dense_pages(page_table[prefix.table_row], shared_end - page_offset, ps, page_offset)
    o1, lse1 = _partials(q_shared, cache, layer, shared, config, platform)
    splits = o1.shape[2]
    at = jnp.minimum(prefix.group, g - 1), prefix.position  # each row's group and place: [B, Hkv, splits, ...]
    o1 = o1.reshape(g, hkv, splits, n, group, d)[at[0], :, :, at[1]]
    lse1 = lse1.reshape(g, hkv, splits, n, group)[at[0], :, :, at[1]]
    # Each row's own pages.
    first_own = jnp.maximum(prefix.pages[at[0]] * ps, page_offset)
    own = selection.dense_pages(page_table, lengths, ps, page_offset, first_token=first_own)
    o2, lse2 = _partials(q.reshape(b, hkv, group, d), cache, layer, own, config, platform)
    # Each read's splits merged apart, then the two: a row with nothing shared gets its own read's merge exactly
    # (weights 0 and 1), as from the plain read, whatever its neighbours share.
    parts = [kernels.merge_partials(o, lse, axis=2) for o, lse in ((o1, lse1), (o2, lse2))]
    out, _ = kernels.merge_partials(jnp.stack([o for o, _ in parts], axis=2), jnp.stack([l for _, l in parts], axis=2),
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
                     shared_pages: jax.Array | None = None, prefix: SharedPrefix | None = None,
                     head_mean: selection.HeadMean | None = None, platform: str | None = None
                     ) -> tuple[jax.Array, jax.Array]:
    """One decode step of one layer for B sequences.

    q [B, Hq, D] (rotated); cache: pools [L, Hkv, P, ps, D] (the current token already appended); layer: int32
    scalar; page_table int32[B, M]; lengths int32[B] (cached tokens, the current one included; the cache's
    pages are laid out with config.cache_page_size and config.page_offset); num_samples, shared_pages
    int32[P]: B = P x num_samples sequences whose first shared_pages[p] entries are shared (enables the
    cascade and the shared scoring of block top-k; None: nothing shared); prefix: rows grouped by a shared
    prompt in any other layout (the continuous engine's slots; the cascade only, a sparse policy scores each row
    alone; exclusive with shared_pages); head_mean: when the query heads of a
    KV head are split over devices, the function that completes group means (sharding.meshes.kv_head_mean; block
    selection uses it); platform: the compilation target ("gpu", "tpu", "cpu"; default: jax's default backend),
    which sets the kernel's split count. Returns (out [B, Hq, D], KV tokens attended int32[B]).
    """
    platform = platform or jax.default_backend()
    ps, page_offset, policy = cache.page_size, config.page_offset, config.policy

    if num_samples > 1 and shared_pages is not None:
        if prefix is not None:
            raise ValueError("decode_attention: give shared_pages (with num_samples) or prefix, not both")
        prefix = SharedPrefix.of_samples(shared_pages, num_samples)

    def dense(q):
        if prefix is not None and prefix.width > 1:
            out = _cascade(q, cache, layer, page_table, lengths, prefix, page_offset, config, platform)
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
