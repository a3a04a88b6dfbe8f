"""Strided block top-k: block top-k over overlapping blocks, the Kinetics baseline that oversamples and deduplicates.

The middle of the context [sink, n - local) is cut into pages of `stride` = block_size / 2 tokens. Window j
covers pages j and j + 1 (tokens [sink + j * stride, sink + j * stride + block_size)), so consecutive windows
overlap by half. A window's score is the group-mean query . the mean of its two pages' mean keys (the mean
logit over the window, as the original averages the group-mean logits over each block). A step chooses the
2 x block_topk best windows (twice the blocks the budget holds), takes the union of their pages (the duplicates
of overlapping windows removed) and keeps the block_topk x block_size tokens of that union with the lowest
positions; plus the sink, the local window and the trailing partial page.

Two windows that share a page share at most one, so 2 x block_topk distinct windows cover at least
2 x block_topk + 1 pages: once active the union always exceeds the budget and a step attends exactly
sink + local + partial page + block_topk x block_size tokens. The policy is active once the middle holds more
than 2 x block_topk full pages (below, the union is every page: dense).

Differences from the original (Kinetics' `strided_blockwise_topk_sparsity`), both forced or made visible by pages:
the stride is half the block (the original allows any stride; with this one the count above is exact), and the
tokens past the last full page of the middle, which no window of the original covers and it drops, are attended
with the local window here (block_topk does the same with its trailing partial block).

The engine scores each full page once from its mean-key summary (pallas_kernels.page_scores, in chunks of
SCORE_CHUNK windows with a running top-k, the trip count set by the longest sequence), averages adjacent page
scores into window scores, and reads only the kept pages. Each sample scores its own pages (no shared prompt
scoring), and the cost model prices it so (`prompt_blocks` is 0).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from kinetics_jax.checks import ceil_div
from kinetics_jax.policies.base import Policy, register
from kinetics_jax.policies.block_topk import SCORE_CHUNK, block_scores, group_means, merge_top, whole_blocks

if TYPE_CHECKING:
    import jax

    from kinetics_jax.attention.selection import HeadMean
    from kinetics_jax.cache import KVCache
    from pallas_kernels.paged_decode import PageList


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class StridedBlockTopK(Policy):
    """sink + local + block_size x block_topk tokens (+ the trailing partial page) per step once active. Label:
    strided_block_topk-<tokens> with tokens = block_size x block_topk (a whole number of blocks)."""

    kind = "strided_block_topk"
    budget_field = "block_topk"
    summaries = ("k_mean",)
    scoring_flops = 2  # qbar . mean key per scored page and KV-head channel (window means: 2 FLOPs per head, left out)
    int_fields = {"block_topk": 1, "block_size": 2, "sink": 0, "local": 0}
    why = {"block_topk": "a budget of 0 attends nothing", "block_size": "a block is two pages of block_size / 2"}
    block_topk: int
    block_size: int = 16
    sink: int = 4
    local: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size & (self.block_size - 1):
            raise self.error("block_size", "must be a power of two (a block is two KV cache pages)")

    @property
    def stride(self) -> int:
        """Tokens between consecutive windows: one cache page."""
        return self.block_size // 2

    @property
    def pages_kept(self) -> int:
        """Middle pages a step keeps once active: the budget's block_topk x block_size tokens."""
        return 2 * self.block_topk

    @property
    def budget(self) -> int:
        return self.sink + self.local + self.block_size * self.block_topk

    @property
    def tokens(self) -> int:
        return self.block_size * self.block_topk

    @classmethod
    def from_tokens(cls, tokens: int, fields: dict[str, Any]) -> "StridedBlockTopK":
        return cls(**whole_blocks(cls, tokens, fields))

    def candidate_blocks(self, n: Any, xp: Any = np) -> Any:
        """Full middle pages at context n: the pages scored (each once; the windows are pairs of them)."""
        return xp.maximum(n - self.local - self.sink, 0) // self.stride

    def attended(self, n: Any, xp: Any = np) -> Any:
        return n - xp.maximum(self.candidate_blocks(n, xp) - self.pages_kept, 0) * self.stride

    @property
    def page_size(self) -> int:
        return self.stride

    def page_offset(self, page_size: int) -> int:
        """Pages are shifted so that the middle, which starts right after the sink, is whole pages."""
        return (-self.sink) % self.stride

    def keep_mask(self, q, k, lengths):
        import jax.numpy as jnp

        from kinetics_jax.attention import reference

        b, t_max, hkv, _ = k.shape
        t = jnp.arange(t_max)[None, None, :]
        n = lengths[:, None, None]
        valid = jnp.broadcast_to(t < n, (b, hkv, t_max))
        ps, kept = self.stride, self.pages_kept
        num_pages = max(t_max - self.sink, 0) // ps
        if num_pages <= kept:  # no sequence that fits can be active
            return valid
        span = k[:, self.sink:self.sink + num_pages * ps].astype(jnp.float32)
        mean_key = jnp.mean(span.reshape(b, num_pages, ps, hkv, -1), axis=2).astype(k.dtype).astype(jnp.float32)
        qg = q.reshape(b, hkv, q.shape[1] // hkv, -1).astype(jnp.float32)
        page_scores = jnp.mean(jnp.einsum("bkgd,bjkd->bkgj", qg, mean_key), axis=2)  # [B, Hkv, J]
        n_full = self.candidate_blocks(n, jnp)
        windows = (page_scores[..., :-1] + page_scores[..., 1:]) / 2  # window j: pages j, j + 1
        windows = jnp.where(jnp.arange(num_pages - 1)[None, None, :] < n_full - 1, windows, -jnp.inf)
        chosen = reference.top_mask(windows, kept)
        none = jnp.zeros_like(chosen[..., :1])
        union = jnp.concatenate([chosen, none], -1) | jnp.concatenate([none, chosen], -1)  # [B, Hkv, J]
        union = union & (jnp.cumsum(union, axis=-1) <= kept)  # the lowest positions, up to the budget
        page_of = jnp.clip((t - self.sink) // ps, 0, num_pages - 1)
        picked = jnp.take_along_axis(union, jnp.broadcast_to(page_of, (b, hkv, t_max)), axis=-1)
        in_pages = (t >= self.sink) & (t < self.sink + n_full * ps)
        active = n_full > kept
        return valid & (~active | ~in_pages | picked)

    def decode(self, q, step):
        pages = strided_pages(q, step.cache, step.layer, step.page_table, step.lengths, self, step.head_mean)
        return step.read(q, pages), pages.tokens(step.page_size)[:, 0]


def strided_pages(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
                  policy: StridedBlockTopK, head_mean: HeadMean | None = None) -> PageList:
    """Per KV head: the sink pages, the kept middle pages (the lowest pages_kept of the union of the best
    2 x block_topk windows; every full page while inactive) and the local pages (local window and partial page).
    q [B, Hq, D]; page_table int32[B, W] of a cache laid out with page size policy.stride and
    policy.page_offset, so that the sink fills pages 0 .. sink_pages - 1 and middle page j is entry
    sink_pages + j; lengths int32[B]."""
    import jax
    import jax.numpy as jnp

    from kinetics_jax.attention import selection

    ps, kept = policy.stride, policy.pages_kept
    offset = policy.page_offset(ps)
    rows, width = page_table.shape
    hkv = cache.k.shape[1]
    sink_pages = ceil_div(policy.sink, ps)
    n = lengths.astype(jnp.int32)
    n_full = policy.candidate_blocks(n, jnp)
    parts = [jnp.broadcast_to(jnp.arange(sink_pages, dtype=jnp.int32), (rows, hkv, sink_pages))]
    valid_parts = [parts[0] * ps < (n + offset)[:, None, None]]
    middle = min(kept, max(width - sink_pages, 0))
    if middle:
        every = jnp.broadcast_to(jnp.arange(middle, dtype=jnp.int32), (rows, hkv, middle))
        blocks, valid = every, every < n_full[:, None, None]
        windows = min(kept, max(width - sink_pages - 1, 0))
        if windows:  # rows past the threshold keep the union's lowest pages
            starts, ok = _top_windows(q, cache, layer, page_table, sink_pages, n_full, windows, head_mean)
            pairs = jnp.stack([starts, starts + 1], axis=-1).reshape(rows, hkv, 2 * windows)  # non-decreasing
            earlier = jnp.concatenate([jnp.full_like(pairs[..., :1], -1), pairs[..., :-1]], axis=-1)
            new = jnp.repeat(ok, 2, axis=-1) & (pairs != earlier)
            new = new & (jnp.cumsum(new, axis=-1) <= kept)
            _, union = jax.lax.sort((~new, jnp.where(new, pairs, 0)), dimension=-1, num_keys=1, is_stable=True)
            count = jnp.sum(new, axis=-1, keepdims=True)
            active = (n_full > kept)[:, None, None]
            blocks = jnp.where(active, union[..., :middle], every)
            valid = jnp.where(active, every < count, valid)
        parts.append(sink_pages + blocks)
        valid_parts.append(valid)
    local = sink_pages + n_full[:, None, None] + jnp.arange(ceil_div(policy.local + ps - 1, ps), dtype=jnp.int32)
    local = jnp.broadcast_to(local, (rows, hkv, local.shape[-1]))
    parts.append(local)
    valid_parts.append(local * ps < (n + offset)[:, None, None])
    return selection.explicit_pages(page_table, jnp.concatenate(parts, axis=-1),
                                    jnp.concatenate(valid_parts, axis=-1),
                                    selection.window(jnp.full_like(n, offset), n + offset))


def _top_windows(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, first: int,
                 n_full: jax.Array, chosen: int, head_mean: HeadMean | None) -> tuple[jax.Array, jax.Array]:
    """(the `chosen` best window starts int32[B, Hkv, chosen] in increasing order, which of them exist): window
    j < n_full[b] - 1 is pages first + j and first + j + 1 of row b's page table; a running top-k over chunks of
    SCORE_CHUNK windows (one page score more than windows per chunk), the trip count set by the longest row."""
    import jax
    import jax.numpy as jnp

    b = q.shape[0]
    hkv = cache.k.shape[1]
    width = page_table.shape[1]
    qbar, _ = group_means(q, hkv, False, head_mean)
    chunk = min(SCORE_CHUNK, max(width - first - 1, 1))
    step = jnp.arange(chunk, dtype=jnp.int32)

    def body(i, state):
        hi = jnp.clip(n_full - i * chunk, 0, chunk + 1)
        pages = block_scores(qbar[:, None], None, cache, layer, page_table, first + i * chunk, jnp.zeros_like(hi),
                             hi, chunk + 1)[:, 0]                                          # [B, Hkv, C + 1]
        return merge_top(state, (pages[..., :-1] + pages[..., 1:]) / 2, i * chunk + step)

    state = (jnp.full((b, hkv, chosen), -jnp.inf, jnp.float32), jnp.zeros((b, hkv, chosen), jnp.int32))
    values, best = jax.lax.fori_loop(0, ceil_div(jnp.maximum(jnp.max(n_full) - 1, 0), chunk), body, state)
    best = jnp.sort(jnp.where(values > -jnp.inf, best, width), axis=-1)  # width: no window
    return best.astype(jnp.int32), best < width
