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

Device state (`KVCache`, a pytree) holds the page pools of all layers, stacked like the model's layers, and,
for block top-k, one summary per page and layer in the cache dtype: the mean key ("mean" score) or the
channel-wise key min and max ("quest"). A page's summary is written once, when the page is full (its last slot
written, or at prefill for full prompt pages); only full pages are ever scored. Writes go through
pallas_kernels.paged_write: in place, with the pools keeping the layout the decode kernels read.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kinetics_jax.config import Qwen3Config
from kinetics_jax.model.layers import DType
from pallas_kernels import paged_write

NULL_PAGE = 0
SUMMARY_FIELDS = ("k_mean", "k_min", "k_max")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Page layout of one request. Sequence b = p * num_samples + s.

    page_table: int32[B, max_pages] (unused entries point at the null page); shared_pages: pages stored once per
    prompt; num_pages: pool size, the null page included. The prefill writes whole pages: entry i copies block
    prefill_block[i] of prompt prefill_prompt[i] (its virtual tokens block * page_size ..) into page
    prefill_page[i]; full prompt pages are written once, a partial last one once per sample.
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
    prefill_prompt: np.ndarray
    prefill_block: np.ndarray

    @classmethod
    def for_request(cls, prompt_lengths: list[int], num_samples: int, max_new_tokens: int, page_size: int,
                    *, page_offset: int = 0, pad_pages_to: int = 1) -> "CachePlan":
        """Lays out pages for prompts of the given lengths, `num_samples` each, up to `max_new_tokens` new tokens.

        A sequence stores positions 0 .. prompt + max_new_tokens - 2 (the last sampled token is never fed back).
        `pad_pages_to` rounds the pool size up (a shape bucket).
        """
        num_pages = cls.pool_pages(prompt_lengths, num_samples, max_new_tokens, page_size, page_offset=page_offset,
                                   pad_pages_to=pad_pages_to)
        tables: list[list[int]] = []
        writes: list[tuple[int, int, int]] = []
        next_page = NULL_PAGE + 1
        shared = 0
        for p, length in enumerate(prompt_lengths):
            full = (length + page_offset) // page_size  # pages holding only prompt tokens (and empty slots)
            shared_ids = list(range(next_page, next_page + full))
            next_page += full
            shared += full
            writes += [(page, p, block) for block, page in enumerate(shared_ids)]
            own = _ceil_div(page_offset + length + max_new_tokens - 1, page_size) - full
            partial = (length + page_offset) % page_size > 0
            for _ in range(num_samples):
                own_ids = list(range(next_page, next_page + own))
                next_page += own
                tables.append(shared_ids + own_ids)
                if partial:  # the partial last prompt page, per sample
                    writes.append((own_ids[0], p, full))
        assert num_pages == _ceil_div(next_page, pad_pages_to) * pad_pages_to  # pool_pages: this loop's closed form
        width = max(len(row) for row in tables)
        table = np.full((len(tables), width), NULL_PAGE, np.int32)
        for b, row in enumerate(tables):
            table[b, :len(row)] = row
        cols = np.asarray(writes, np.int32).reshape(-1, 3).T
        return cls(page_size, page_offset, num_samples, tuple(prompt_lengths), max_new_tokens, num_pages, shared,
                   table, cols[0], cols[1], cols[2])

    @staticmethod
    def pool_pages(prompt_lengths: Sequence[int], num_samples: int, max_new_tokens: int, page_size: int, *,
                   page_offset: int = 0, pad_pages_to: int = 1) -> int:
        """The `num_pages` that `for_request` gives the same arguments, in closed form: O(prompts) work, none
        per sample, so a request can be sized (and refused) before any per-sample structure is built.

        1 (the null page) + per prompt: its full prompt pages once, plus num_samples x its own pages (the partial
        last prompt page and the generated tokens), rounded up to a multiple of `pad_pages_to`.
        """
        if not 0 <= page_offset < page_size:
            raise ValueError(f"page_offset must be in [0, page_size={page_size}), got {page_offset}")
        pages = NULL_PAGE + 1
        for length in prompt_lengths:
            full = (length + page_offset) // page_size
            own = _ceil_div(page_offset + length + max_new_tokens - 1, page_size) - full
            pages += full + num_samples * own
        return _ceil_div(pages, pad_pages_to) * pad_pages_to

    @staticmethod
    def pool_bytes(num_pages: int, page_size: int, config: Qwen3Config, dtype: DType, summaries: int) -> int:
        """Device bytes of a KV cache pool of `num_pages` pages: K, V and `summaries` summary arrays per page
        (AttentionConfig.summaries: 0, 1 for the mean key, 2 for the Quest min and max), all in `dtype`."""
        per_page = config.num_hidden_layers * config.num_key_value_heads * config.head_dim
        return num_pages * page_size * config.kv_bytes_per_token(dtype) + summaries * num_pages * per_page * \
            np.dtype(dtype).itemsize

    @property
    def shared_pages_per_prompt(self) -> np.ndarray:
        """int32[P]: the leading page-table entries that the N samples of each prompt share."""
        return np.asarray([(n + self.page_offset) // self.page_size for n in self.prompt_lengths], np.int32)

    def prefill_writes(self, padded_len: int, size: int | None = None) -> np.ndarray:
        """int32[3, size] (default: one column per write): the prefill's page writes for prompts right-padded
        to `padded_len` tokens, as engine.prefill takes them: destination page, source page (prompt *
        pages_per_prompt + block, pages_per_prompt = ceil((padded_len + page_offset) / page_size)) and whether
        the page is full of prompt tokens (its summaries are written). Padding columns write the null page."""
        n = self.prefill_page.size
        size = n if size is None else size
        blocks = _ceil_div(padded_len + self.page_offset, self.page_size)
        lengths = np.asarray(self.prompt_lengths, np.int64)
        full = (self.prefill_block + 1) * self.page_size <= lengths[self.prefill_prompt] + self.page_offset
        writes = np.zeros((3, size), np.int32)
        writes[:, :n] = np.stack([self.prefill_page, self.prefill_prompt * blocks + self.prefill_block, full])
        return writes

    def bytes(self, config: Qwen3Config, dtype: DType, summaries: int) -> int:
        """Device bytes of the KV cache this plan allocates (see pool_bytes)."""
        return self.pool_bytes(self.num_pages, self.page_size, config, dtype, summaries)


def page_summaries(keys: jax.Array, fields: tuple[str, ...]) -> dict[str, jax.Array]:
    """Summaries of whole pages keys [..., page_size, D]: "k_mean" (mean over the slots, computed in float32),
    "k_min" / "k_max" (channel-wise), each [..., D] in the keys' dtype."""
    functions = {"k_mean": lambda x: jnp.mean(x.astype(jnp.float32), axis=-2).astype(x.dtype),
                 "k_min": lambda x: jnp.min(x, axis=-2), "k_max": lambda x: jnp.max(x, axis=-2)}
    return {name: functions[name](keys) for name in fields}


class KVCache(NamedTuple):
    """Page pools [layers, kv_heads, pages, page_size, head_dim] (head-major, as paged-attention kernels read
    them) and per-page summaries [layers, pages, kv_heads, head_dim] in the pools' dtype (page-major: the rows
    that scoring gathers and a filled page writes are contiguous, in the layout XLA scatters and gathers
    without re-laying the array out): k_mean (block top-k "mean" score), k_min / k_max ("quest"); a summary the
    policy does not score is None."""

    k: jax.Array
    v: jax.Array
    k_mean: jax.Array | None = None
    k_min: jax.Array | None = None
    k_max: jax.Array | None = None

    @classmethod
    def zeros(cls, config: Qwen3Config, num_pages: int, page_size: int, dtype: DType,
              summaries: tuple[str, ...] = (), kv_replicas: int = 1) -> "KVCache":
        """An empty cache with the named summary fields (AttentionConfig.summaries); `kv_replicas` copies of
        each KV head (sharding.meshes.kv_replicas: heads replicated over a "model" mesh axis larger than the KV
        head count)."""
        shape = (config.num_hidden_layers, config.num_key_value_heads * kv_replicas, num_pages, page_size,
                 config.head_dim)
        summary = (shape[0], num_pages, shape[1], shape[4])  # page-major: a page's row [Hkv, D] is contiguous
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   **{name: jnp.zeros(summary, dtype) for name in summaries})

    @property
    def page_size(self) -> int:
        return self.k.shape[3]

    @property
    def summary_fields(self) -> tuple[str, ...]:
        return tuple(name for name in SUMMARY_FIELDS if getattr(self, name) is not None)

    def _with_summaries(self, layer: jax.Array, pages: jax.Array, values: dict[str, jax.Array]) -> "KVCache":
        """Summaries [n, Hkv, D] of `layer` stored at pages int32[n] (the null page takes padding)."""
        return self._replace(**{name: paged_write.write_rows(getattr(self, name), layer, pages, value)
                                for name, value in values.items()})

    def write_prompt(self, layer: jax.Array, pages: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array,
                     full: jax.Array) -> "KVCache":
        """Prefill of one layer: page pages[i] := the prompt page index[i] of k, v [M, Hkv, page_size, D]; the
        summaries of the pages where full[i] (every slot a prompt token) are written too."""
        k_pool, v_pool = paged_write.write_pages(self.k, self.v, layer, pages, k, v, index)
        cache = self._replace(k=k_pool, v=v_pool)
        if not self.summary_fields:
            return cache
        values = page_summaries(k.astype(self.k.dtype)[index], self.summary_fields)
        return cache._with_summaries(layer, jnp.where(full, pages, NULL_PAGE), values)

    def append(self, layer: jax.Array, pages: jax.Array, slots: jax.Array, k: jax.Array, v: jax.Array
               ) -> "KVCache":
        """Decode: stores k, v [n, Hkv, D] of one layer at (pages[i], slots[i]); a page whose last slot this
        fills gets its summaries. Each (page, slot) must be written once."""
        k_pool, v_pool = paged_write.write_tokens(self.k, self.v, layer, pages, slots, k, v)
        cache = self._replace(k=k_pool, v=v_pool)
        if not self.summary_fields:
            return cache
        completed = jnp.where(slots == self.page_size - 1, pages, NULL_PAGE)
        values = page_summaries(k_pool[layer, :, completed], self.summary_fields)  # [n, Hkv, D] each
        return cache._with_summaries(layer, completed, values)
