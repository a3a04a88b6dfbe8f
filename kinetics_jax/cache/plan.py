"""`CachePlan`: where each sequence of a request keeps its pages, computed on the host (numpy) before any device
work, by `PagedLayout.plan`.

For a request of P prompts x N samples, sequence b = p * N + s has a page table row listing its pages in order:

    [ shared pages of prompt p (its full prompt pages, stored once for all N samples)
    | own pages of sample (p, s) (the copy of the prompt's partial last page, then generated tokens) ]

so the prompt KV is written and stored once, and only the partial last page is copied per sample. Page 0 is the
null page: padding writes land there and no page table points at it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from kinetics_jax.checks import ceil_div

if TYPE_CHECKING:
    from kinetics_jax.cache.layout import PagedLayout


@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Page layout of one request. Sequence b = p * num_samples + s.

    page_table: int32[B, max_pages] (unused entries point at the null page); num_pages: the pool's pages, the
    null page included; shared_page_count: pages stored once per prompt, summed over the prompts. The prefill
    writes whole pages: entry i copies block prefill_block[i] of prompt prefill_prompt[i] (its virtual tokens
    block * page_size ..) into page prefill_page[i]; full prompt pages are written once, a partial last one once
    per sample.
    """

    layout: "PagedLayout"
    num_samples: int
    prompt_lengths: tuple[int, ...]
    max_new_tokens: int
    num_pages: int
    shared_page_count: int
    page_table: np.ndarray
    prefill_page: np.ndarray
    prefill_prompt: np.ndarray
    prefill_block: np.ndarray

    @property
    def shared_pages_per_prompt(self) -> np.ndarray:
        """int32[P]: the leading page-table entries that the N samples of each prompt share."""
        ps, offset = self.layout.page_size, self.layout.page_offset
        return np.asarray([(n + offset) // ps for n in self.prompt_lengths], np.int32)

    def prefill_writes(self, padded_len: int, size: int | None = None) -> np.ndarray:
        """int32[3, size] (default: one column per write): the prefill's page writes for prompts right-padded
        to `padded_len` tokens, as sampling.prefill takes them: destination page, source page (prompt *
        pages_per_prompt + block, pages_per_prompt = ceil((padded_len + page_offset) / page_size)) and whether
        the page is full of prompt tokens (its summaries are written). Padding columns write the null page."""
        ps, offset = self.layout.page_size, self.layout.page_offset
        n = self.prefill_page.size
        size = n if size is None else size
        blocks = ceil_div(padded_len + offset, ps)
        lengths = np.asarray(self.prompt_lengths, np.int64)
        full = (self.prefill_block + 1) * ps <= lengths[self.prefill_prompt] + offset
        writes = np.zeros((3, size), np.int32)
        writes[:, :n] = np.stack([self.prefill_page, self.prefill_prompt * blocks + self.prefill_block, full])
        return writes
