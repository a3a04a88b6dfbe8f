"""`PagedLayout`: how a KV cache is paged. It owns the arithmetic of pages (a request's plan and pool size, the
page of a position), the cache arrays (shapes, bytes, logical axes) and the one conversion of contiguous K/V
into pages, so the engine, the cost model, the benchmarks and the tests build caches one way.

Token t of a sequence sits at virtual index t + page_offset of its page list (page (t + offset) // page_size,
slot (t + offset) % page_size): the offset leaves the first slots of the first page empty, so that block top-k
blocks, which start right after the sink, are whole pages (AttentionConfig.page_offset). A KV head may be stored
`kv_replicas` times (a "model" mesh axis larger than the KV head count, sharding.meshes.kv_replicas).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kinetics_jax.cache.plan import CachePlan
from kinetics_jax.cache.pools import NULL_PAGE, SUMMARY_FIELDS, KVCache
from kinetics_jax.checks import ceil_div, checked_int
from kinetics_jax.sharding.axes import CACHE_POOL, CACHE_SUMMARY

if TYPE_CHECKING:
    from kinetics_jax.config import Qwen3Config
    from kinetics_jax.model.layers import DType
    from kinetics_jax.policies import AttentionConfig


@dataclasses.dataclass(frozen=True)
class PagedLayout:
    """page_size: tokens per page; page_offset: empty slots before token 0 in a sequence's first page, in
    [0, page_size); summaries: the per-page key summaries kept (KVCache fields: "k_mean", "k_min", "k_max");
    kv_replicas: copies of each KV head in the pools.

        layout = PagedLayout.of(AttentionConfig(BlockTopK(block_topk=4, block_size=16)))
        plan = layout.plan([37, 5], num_samples=4, max_new_tokens=100)
        cache = layout.zeros(model_config, plan.num_pages, jnp.bfloat16)
    """

    page_size: int
    page_offset: int = 0
    summaries: tuple[str, ...] = ()
    kv_replicas: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "page_size", checked_int(self.page_size, "PagedLayout.page_size", minimum=1))
        object.__setattr__(self, "kv_replicas", checked_int(self.kv_replicas, "PagedLayout.kv_replicas", minimum=1))
        offset = checked_int(self.page_offset, "PagedLayout.page_offset", minimum=0, maximum=self.page_size - 1,
                             why="empty slots of the first page")
        object.__setattr__(self, "page_offset", offset)
        object.__setattr__(self, "summaries", tuple(self.summaries))
        unknown = [name for name in self.summaries if name not in SUMMARY_FIELDS]
        if unknown:
            raise ValueError(f"PagedLayout.summaries: unknown summary {unknown[0]!r} (one of {SUMMARY_FIELDS})")

    @classmethod
    def of(cls, attention: "AttentionConfig", kv_replicas: int = 1) -> "PagedLayout":
        """The layout a policy's cache needs: its page size and offset and its summaries."""
        return cls(attention.cache_page_size, attention.page_offset, attention.summaries, kv_replicas)

    # ------------------------------------------------------------------------------------------- host planning
    def _pages_per_prompt(self, length: int, max_new_tokens: int) -> tuple[int, int]:
        """(full prompt pages, own pages per sample) of a prompt of `length` tokens: a sequence stores positions
        0 .. length + max_new_tokens - 2 (the last sampled token is never fed back)."""
        full = (length + self.page_offset) // self.page_size
        return full, ceil_div(self.page_offset + length + max_new_tokens - 1, self.page_size) - full

    def pool_pages(self, prompt_lengths: Sequence[int], num_samples: int, max_new_tokens: int, *,
                   pad_pages_to: int = 1) -> int:
        """The pool size `plan` gives the same arguments, in closed form: O(prompts) work, none per sample, so a
        request can be sized (and refused) before any per-sample structure is built.

        1 (the null page) + per prompt: its full prompt pages once, plus num_samples x its own pages (the partial
        last prompt page and the generated tokens), rounded up to a multiple of `pad_pages_to`.
        """
        pages = NULL_PAGE + 1
        for length in prompt_lengths:
            full, own = self._pages_per_prompt(length, max_new_tokens)
            pages += full + num_samples * own
        return ceil_div(pages, pad_pages_to) * pad_pages_to

    def plan(self, prompt_lengths: Sequence[int], num_samples: int, max_new_tokens: int, *,
             pad_pages_to: int = 1) -> CachePlan:
        """Lays out pages for prompts of the given lengths, `num_samples` each, up to `max_new_tokens` new tokens
        (see CachePlan). `pad_pages_to` rounds the pool size up (a shape bucket)."""
        num_pages = self.pool_pages(prompt_lengths, num_samples, max_new_tokens, pad_pages_to=pad_pages_to)
        tables: list[list[int]] = []
        writes: list[tuple[int, int, int]] = []
        next_page = NULL_PAGE + 1
        shared = 0
        for p, length in enumerate(prompt_lengths):
            full, own = self._pages_per_prompt(length, max_new_tokens)
            shared_ids = list(range(next_page, next_page + full))
            next_page += full
            shared += full
            writes += [(page, p, block) for block, page in enumerate(shared_ids)]
            partial = (length + self.page_offset) % self.page_size > 0
            for _ in range(num_samples):
                own_ids = list(range(next_page, next_page + own))
                next_page += own
                tables.append(shared_ids + own_ids)
                if partial:  # the partial last prompt page, per sample
                    writes.append((own_ids[0], p, full))
        assert num_pages == ceil_div(next_page, pad_pages_to) * pad_pages_to  # pool_pages: this loop's closed form
        width = max(len(row) for row in tables)
        table = np.full((len(tables), width), NULL_PAGE, np.int32)
        for b, row in enumerate(tables):
            table[b, :len(row)] = row
        cols = np.asarray(writes, np.int32).reshape(-1, 3).T
        return CachePlan(self, num_samples, tuple(prompt_lengths), max_new_tokens, num_pages, shared, table,
                         cols[0], cols[1], cols[2])

    # ------------------------------------------------------------------------------------------- device arrays
    def pool_shape(self, config: "Qwen3Config", num_pages: int) -> tuple[int, int, int, int, int]:
        """[layers, KV heads x kv_replicas, num_pages, page_size, head_dim]: the K (and V) pool."""
        return (config.num_hidden_layers, config.num_key_value_heads * self.kv_replicas, num_pages, self.page_size,
                config.head_dim)

    def pool_bytes(self, config: "Qwen3Config", num_pages: int, dtype: "DType") -> int:
        """Bytes of a cache of `num_pages` pages in `dtype`: K, V and the summaries, every KV head copy included."""
        layers, heads, _, _, d = self.pool_shape(config, num_pages)
        return layers * heads * num_pages * (2 * self.page_size + len(self.summaries)) * d * np.dtype(dtype).itemsize

    def zeros(self, config: "Qwen3Config", num_pages: int, dtype: "DType") -> KVCache:
        """An empty cache of `num_pages` pages with this layout's summaries."""
        shape = self.pool_shape(config, num_pages)
        summary = (shape[0], num_pages, shape[1], shape[4])  # page-major: a page's row [Hkv, D] is contiguous
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                       **{name: jnp.zeros(summary, dtype) for name in self.summaries})

    def axes(self) -> KVCache:
        """The logical axes of each KVCache field (None for a summary this layout does not keep)."""
        return KVCache(CACHE_POOL, CACHE_POOL, **{name: CACHE_SUMMARY for name in self.summaries})

    def slot_of(self, page_table: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(page, slot), each int32[B]: where the token at positions int32[B] of each row's page_table [B, M]
        is stored."""
        virtual = positions + self.page_offset
        return page_table[jnp.arange(page_table.shape[0]), virtual // self.page_size], virtual % self.page_size

    def as_pages(self, x: jax.Array, pages: int) -> jax.Array:
        """Tokens x [R, T, Hkv, D] (token t of row r at virtual index t + page_offset) cut into `pages` >=
        ceil((T + page_offset) / page_size) pages per row: [R * pages, Hkv, page_size, D], empty slots zero."""
        r, t, h, d = x.shape
        ps, offset = self.page_size, self.page_offset
        x = jnp.pad(x, ((0, 0), (offset, pages * ps - offset - t), (0, 0), (0, 0)))
        return x.reshape(r, pages, ps, h, d).transpose(0, 1, 3, 2, 4).reshape(r * pages, h, ps, d)

    def from_contiguous(self, k: jax.Array, v: jax.Array, lengths: jax.Array, plan: CachePlan | None = None
                        ) -> tuple[KVCache, jax.Array]:
        """k, v [L, B, T, Hkv, D] (row b's tokens 0 .. lengths[b] - 1; the rest are not stored) as a paged cache
        with the summaries of every page, laid out by `plan` (its page table has B rows; rows sharing a page
        must hold the same K/V there) or, by default, each row in its own pages (the plan of B one-sample
        prompts of T tokens: row b owns pages 1 + b * M .. (b + 1) * M, M = ceil((T + page_offset) / page_size)).
        Returns (cache, page_table int32[B, M]). A copy: the engine's cache is paged from the start; this form
        is for sparse_decode on contiguous K/V, benchmarks and tests."""
        layers, b, t, hkv, d = k.shape
        if self.kv_replicas != 1:
            raise ValueError("PagedLayout.from_contiguous lays out one copy of each KV head (kv_replicas=1)")
        valid = jnp.arange(t)[None, :] < lengths[:, None]  # [B, T]
        if plan is None:  # each row its own pages, in order: the pool is the rows' pages back to back
            pages = ceil_div(t + self.page_offset, self.page_size)

            def paged(x: jax.Array) -> jax.Array:  # [L, B, T, Hkv, D] -> [L, Hkv, 1 + B * pages, ps, D]
                x = jnp.where(valid[None, :, :, None, None], x, 0).reshape(layers * b, t, hkv, d)
                x = self.as_pages(x, pages).reshape(layers, b * pages, hkv, self.page_size, d)
                return jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (1, 0), (0, 0), (0, 0)))

            table = 1 + jnp.arange(b * pages, dtype=jnp.int32).reshape(b, pages)
            return KVCache.from_pools(paged(k), paged(v), self.summaries), table
        if plan.layout != self or plan.page_table.shape[0] != b:
            raise ValueError(f"PagedLayout.from_contiguous: the plan is for {plan.page_table.shape[0]} rows of "
                             f"{plan.layout}, not {b} rows of {self}")
        virtual = np.arange(t) + self.page_offset
        if ceil_div(t + self.page_offset, self.page_size) > plan.page_table.shape[1]:
            raise ValueError(f"PagedLayout.from_contiguous: {t} tokens per row do not fit the plan's "
                             f"{plan.page_table.shape[1]} pages per row")
        table = jnp.asarray(plan.page_table)
        page = jnp.where(valid, table[:, virtual // self.page_size], NULL_PAGE)  # [B, T]; dropped tokens: null
        slot = jnp.asarray(virtual % self.page_size)[None, :]
        shape = (layers, hkv, plan.num_pages, self.page_size, d)

        def paged(x: jax.Array) -> jax.Array:  # [L, B, T, Hkv, D] -> the pool, each token at (page, slot)
            return jnp.zeros(shape, x.dtype).at[:, :, page, slot].set(jnp.moveaxis(x, 3, 1))

        return KVCache.from_pools(paged(k), paged(v), self.summaries), table
