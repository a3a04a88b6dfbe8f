"""The device side of the paged KV cache: `KVCache`, the page pools of every layer and their per-page key
summaries, and the writes into them (through pallas_kernels.paged_write: in place, in the layout the decode
kernels read).

For block top-k the cache keeps one summary per page and layer in the cache dtype: the mean key ("mean" score)
or the channel-wise key min and max ("quest"). A page's summary is written once, when the page is full (its last
slot written, or at prefill for full prompt pages); only full pages are ever scored.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from pallas_kernels import paged_write

NULL_PAGE = 0
SUMMARY_FIELDS = ("k_mean", "k_min", "k_max")


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
    def from_pools(cls, k: jax.Array, v: jax.Array, summaries: tuple[str, ...]) -> "KVCache":
        """A cache of filled pools k, v [L, Hkv, P, ps, D] with the named summaries of every page (a page that is
        not full gets one too: policies never score it)."""
        values = {name: jnp.swapaxes(value, 1, 2) for name, value in page_summaries(k, summaries).items()}
        return cls(k, v, **values)

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
