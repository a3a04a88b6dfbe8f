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
from typing import TYPE_CHECKING

from kinetics_jax.checks import ceil_div
from kinetics_jax.policies.base import register
from kinetics_jax.policies.block_topk import SCORE_CHUNK, BlockPolicy, block_scores, group_means, merge_top

if TYPE_CHECKING:
    import jax

    from kinetics_jax.attention.selection import HeadMean
    from kinetics_jax.cache import KVCache
    from pallas_kernels.paged_decode import PageList


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class StridedBlockTopK(BlockPolicy):
    """sink + local + block_size x block_topk tokens (+ the trailing partial page) per step once active: the
    lowest kept_pages = 2 x block_topk pages of block_size / 2 of the union of the best 2 x block_topk windows.
    Label: strided_block_topk-<tokens> with tokens = block_size x block_topk (a whole number of blocks)."""

    kind = "strided_block_topk"
    summaries = ("k_mean",)
    scoring_flops = 2  # qbar . mean key per scored page and KV-head channel (window means: 2 FLOPs per head, left out)
    int_fields = {"block_topk": 1, "block_size": 2, "sink": 0, "local": 0}
    why = {**BlockPolicy.why, "block_size": "a block is two pages of block_size / 2"}

    @property
    def stride(self) -> int:
        """Tokens between consecutive windows: one cache page."""
        return self.block_size // 2

    @property
    def page_size(self) -> int:
        return self.stride

    def keep_mask(self, q, k, lengths):
        import jax.numpy as jnp

        from kinetics_jax.attention import reference

        b, t_max, hkv, _ = k.shape
        t = jnp.arange(t_max)[None, None, :]
        n = lengths[:, None, None]
        valid = jnp.broadcast_to(t < n, (b, hkv, t_max))
        ps, kept = self.stride, self.kept_pages
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
    """Per KV head: the sink pages, the kept middle pages (the lowest kept_pages of the union of the best
    2 x block_topk windows; every full page while inactive) and the local pages (local window and partial page).
    q [B, Hq, D]; page_table int32[B, W] of a cache laid out with page size policy.stride and
    policy.page_offset, so that the sink fills pages 0 .. sink_pages - 1 and middle page j is entry
    sink_pages + j; lengths int32[B]."""
    import jax
    import jax.numpy as jnp

    kept = policy.kept_pages
    rows, width = page_table.shape
    hkv = cache.k.shape[1]
    sink_pages = ceil_div(policy.sink, policy.stride)
    n = lengths.astype(jnp.int32)
    n_full = policy.candidate_blocks(n, jnp)
    middle = min(kept, max(width - sink_pages, 0))
    every = jnp.broadcast_to(jnp.arange(middle, dtype=jnp.int32), (rows, hkv, middle))
    windows = min(kept, max(width - sink_pages - 1, 0))
    if not windows:  # no row can be past the threshold: every full page (none when the table has no middle)
        return policy.page_list(page_table, n, every, every < n_full[:, None, None])
    starts, ok = _top_windows(q, cache, layer, page_table, sink_pages, n_full, windows, head_mean)
    pairs = jnp.stack([starts, starts + 1], axis=-1).reshape(rows, hkv, 2 * windows)  # non-decreasing
    earlier = jnp.concatenate([jnp.full_like(pairs[..., :1], -1), pairs[..., :-1]], axis=-1)
    new = jnp.repeat(ok, 2, axis=-1) & (pairs != earlier)
    new = new & (jnp.cumsum(new, axis=-1) <= kept)  # the union's lowest pages, up to the budget
    _, union = jax.lax.sort((~new, jnp.where(new, pairs, 0)), dimension=-1, num_keys=1, is_stable=True)
    count = jnp.sum(new, axis=-1, keepdims=True)
    active = (n_full > kept)[:, None, None]  # below the threshold: every full page
    return policy.page_list(page_table, n, jnp.where(active, union[..., :middle], every),
                            jnp.where(active, every < count, every < n_full[:, None, None]))


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
