"""Paged KV cache with a shared prompt prefix.

A page holds `page_size` consecutive tokens of one sequence (it is also the block of the block-sparse policies).
For a request of P prompts x N samples, sequence b = p * N + s has a page table row listing its pages in order:

    [ shared pages of prompt p (its full prompt pages, stored once for all N samples)
    | own pages of sample (p, s) (the copy of the prompt's partial last page, then generated tokens) ]

so the prompt KV is written and stored once, and only the partial last page is copied per sample. Page 0 is a
null page: padding writes land there and no page table points at it. Token t of a sequence sits at virtual
index t + page_offset of its page list (page (t + offset) // page_size, slot (t + offset) % page_size): the
offset (AttentionConfig.page_offset) leaves the first slots of the first page empty, so that block top-k
blocks, which start right after the sink, are whole pages. The plan (host side, numpy) is computed
from the request before any device work, so a request that cannot fit is refused up front.

Device state (`KVCache`, a pytree) holds the page pools of all layers, stacked like the model's layers, plus
per-page key summaries maintained on every append (never recomputed over the cache): the key sum (mean = sum /
tokens in the page) and optionally channel-wise min / max (the Quest bound).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kinetics_jax.config import Qwen3Config
from kinetics_jax.model.layers import DType

NULL_PAGE = 0


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Page layout of one request. Sequence b = p * num_samples + s.

    page_table: int32[B, max_pages] (unused entries point at the null page); shared_pages: pages stored once per
    prompt; num_pages: pool size, the null page included. The prefill scatter (`prefill_*`: one entry per
    (destination page, slot) <- (prompt, token) copy) writes full prompt pages once and partial ones N times.
    """

    page_size: int
    page_offset: int
    num_samples: int
    prompt_lengths: tuple[int, ...]
    max_new_tokens: int
    num_pages: int
    shared_pages: int
    page_table: np.ndarray
    prefill_page: np.ndarray
    prefill_slot: np.ndarray
    prefill_prompt: np.ndarray
    prefill_token: np.ndarray

    @classmethod
    def for_request(cls, prompt_lengths: list[int], num_samples: int, max_new_tokens: int, page_size: int,
                    *, page_offset: int = 0, pad_pages_to: int = 1, pad_prefill_to: int = 1) -> "CachePlan":
        """Lays out pages for prompts of the given lengths, `num_samples` each, up to `max_new_tokens` new tokens.

        A sequence stores positions 0 .. prompt + max_new_tokens - 2 (the last sampled token is never fed back).
        `pad_pages_to` / `pad_prefill_to` round the pool size and the scatter length up (shape buckets).
        """
        if not 0 <= page_offset < page_size:
            raise ValueError(f"page_offset must be in [0, page_size={page_size}), got {page_offset}")
        tables: list[list[int]] = []
        scatter: list[tuple[int, int, int, int]] = []
        next_page = NULL_PAGE + 1
        shared = 0
        for p, length in enumerate(prompt_lengths):
            full = (length + page_offset) // page_size  # pages holding only prompt tokens (and empty slots)
            shared_ids = list(range(next_page, next_page + full))
            next_page += full
            shared += full
            for t in range(full * page_size - page_offset):
                scatter.append((shared_ids[(t + page_offset) // page_size], (t + page_offset) % page_size, p, t))
            own = _ceil_div(page_offset + length + max_new_tokens - 1, page_size) - full
            for _ in range(num_samples):
                own_ids = list(range(next_page, next_page + own))
                next_page += own
                tables.append(shared_ids + own_ids)
                for t in range(full * page_size - page_offset, length):  # the partial last prompt page, per sample
                    scatter.append((own_ids[0], (t + page_offset) % page_size, p, t))
        num_pages = _ceil_div(next_page, pad_pages_to) * pad_pages_to
        width = max(len(row) for row in tables)
        table = np.full((len(tables), width), NULL_PAGE, np.int32)
        for b, row in enumerate(tables):
            table[b, :len(row)] = row
        n = _ceil_div(max(len(scatter), 1), pad_prefill_to) * pad_prefill_to
        cols = np.zeros((4, n), np.int32)  # padding entries copy (prompt 0, token 0) into the null page
        if scatter:
            cols[:, :len(scatter)] = np.asarray(scatter, np.int32).T
        return cls(page_size, page_offset, num_samples, tuple(prompt_lengths), max_new_tokens, num_pages, shared, table,
                   cols[0], cols[1], cols[2], cols[3])

    @property
    def shared_pages_per_prompt(self) -> np.ndarray:
        """int32[P]: the leading page-table entries that the N samples of each prompt share."""
        return np.asarray([(n + self.page_offset) // self.page_size for n in self.prompt_lengths], np.int32)

    @property
    def allocated_pages(self) -> int:
        """Pages in use (shared + own), the null page and bucket padding excluded."""
        return int(np.count_nonzero(np.unique(self.page_table)))

    def bytes(self, config: Qwen3Config, dtype: DType, minmax: bool) -> int:
        """Device bytes of the KV cache this plan allocates (K, V and the key summaries)."""
        tokens = self.num_pages * self.page_size
        summaries = self.num_pages * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
        return tokens * config.kv_bytes_per_token(dtype) + summaries * (3 if minmax else 1)


class KVCache(NamedTuple):
    """Page pools [layers, kv_heads, pages, page_size, head_dim] (head-major, as paged-attention kernels read
    them) and per-page key summaries [layers, kv_heads, pages, head_dim] (float32). k_min / k_max are None
    unless the cache was built with minmax=True (the Quest score needs them)."""

    k: jax.Array
    v: jax.Array
    k_sum: jax.Array
    k_min: jax.Array | None
    k_max: jax.Array | None

    @classmethod
    def zeros(cls, config: Qwen3Config, num_pages: int, page_size: int, dtype: DType, minmax: bool,
              kv_replicas: int = 1) -> "KVCache":
        """An empty cache; `kv_replicas` copies of each KV head (distributed.kv_replicas: heads replicated over
        a "model" mesh axis larger than the KV head count)."""
        shape = (config.num_hidden_layers, config.num_key_value_heads * kv_replicas, num_pages, page_size,
                 config.head_dim)
        summary = shape[:3] + shape[4:]
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros(summary, jnp.float32),
                   jnp.full(summary, jnp.inf) if minmax else None,
                   jnp.full(summary, -jnp.inf) if minmax else None)

    @property
    def page_size(self) -> int:
        return self.k.shape[3]

    def fill(self, pages: jax.Array, slots: jax.Array, k: jax.Array, v: jax.Array) -> "KVCache":
        """Prefill: stores k, v [layers, n, Hkv, D] of every layer at (pages[i], slots[i]); see `append`."""
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [L, Hkv, n, D]
        return self._store((slice(None), slice(None), pages), slots, k, v)

    def append(self, layer: jax.Array, pages: jax.Array, slots: jax.Array, k: jax.Array, v: jax.Array
               ) -> "KVCache":
        """Decode: stores k, v [n, Hkv, D] of one layer at (pages[i], slots[i]) and folds the keys into the page
        summaries. Each (page, slot) must be written once; the summaries assume so."""
        return self._store((layer, slice(None), pages), slots, k, v)

    def _store(self, at: tuple, slots: jax.Array, k: jax.Array, v: jax.Array) -> "KVCache":
        k32 = k.astype(jnp.float32)
        return KVCache(
            self.k.at[at + (slots,)].set(k.astype(self.k.dtype)),
            self.v.at[at + (slots,)].set(v.astype(self.v.dtype)),
            self.k_sum.at[at].add(k32),
            None if self.k_min is None else self.k_min.at[at].min(k32),
            None if self.k_max is None else self.k_max.at[at].max(k32))
