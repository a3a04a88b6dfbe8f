"""Block top-k: the tractable block-sparse policy. The middle of the context is cut into blocks of `block_size`
tokens (one cache page each); each step keeps the `block_topk` blocks with the best score, plus the sink and
the local window.

Blocks start right after the sink: block j covers [sink + j * block_size, sink + (j + 1) * block_size); the
first n_full = (n - local - sink) // block_size are the candidates, and the trailing partial block joins the local
window. A block's score is the group-mean query . its mean key, kept in the cache dtype ("mean"), or the Quest
upper bound sum_d max(q_d min_d, q_d max_d) over the block's channel-wise key min / max, averaged over the
query group ("quest"). The policy is active once n_full > block_topk (below, every block is kept).

The engine scores the candidates from per-page summaries (pallas_kernels.page_scores, in chunks of SCORE_CHUNK
blocks with a running top-k, a trip count that follows the longest sequence), then reads only the chosen pages.
With N samples per prompt, the prompt's own full pages are scored from one read of their summaries.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from kinetics_jax.checks import ceil_div
from kinetics_jax.policies.base import Policy, register

if TYPE_CHECKING:
    import jax

    from kinetics_jax.attention.selection import HeadMean
    from kinetics_jax.cache import KVCache
    from pallas_kernels.paged_decode import PageList

SCORE_CHUNK = 64  # candidate blocks scored per loop iteration
SCORES = ("mean", "quest")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockPolicy(Policy):
    """Base of the block policies (not registered): the middle [sink, n - local) is cut into cache pages of
    `page_size` tokens aligned right after the sink; once the middle has more than `kept_pages` full pages, a
    step keeps `kept_pages` of them (block_size x block_topk tokens), plus the sink, the local window and the
    trailing partial page. Label: <kind>-<tokens> with tokens = block_size x block_topk (whole blocks)."""

    budget_field = "block_topk"
    why = {"block_topk": "a budget of 0 attends nothing"}
    block_topk: int
    block_size: int = 16
    sink: int = 4
    local: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size & (self.block_size - 1):
            raise self.error("block_size", "must be a power of two (blocks are whole KV cache pages)")

    @property
    def kept_pages(self) -> int:
        """Full middle pages a step keeps once active."""
        return self.block_size * self.block_topk // self.page_size

    @property
    def budget(self) -> int:
        return self.sink + self.local + self.block_size * self.block_topk

    @property
    def tokens(self) -> int:
        return self.block_size * self.block_topk

    @classmethod
    def from_tokens(cls, tokens: int, fields: dict[str, Any]) -> "BlockPolicy":
        """The policy of <tokens> = block_size x block_topk; refused when tokens is not a whole number of blocks
        (a bad block_size is left to the policy's own check)."""
        block_size = fields.pop("block_size", cls.__dataclass_fields__["block_size"].default)
        blocks = tokens
        if isinstance(block_size, int) and block_size > 0:
            if tokens % block_size:
                raise ValueError(f"{cls.kind}-{tokens}: {tokens} tokens is not a whole number of "
                                 f"{block_size}-token blocks")
            blocks = tokens // block_size
        return cls(block_topk=blocks, block_size=block_size, **fields)

    def candidate_blocks(self, n: Any, xp: Any = np) -> Any:
        """Full middle pages at context n (the ones scored)."""
        return xp.maximum(n - self.local - self.sink, 0) // self.page_size

    def attended(self, n: Any, xp: Any = np) -> Any:
        return n - xp.maximum(self.candidate_blocks(n, xp) - self.kept_pages, 0) * self.page_size

    @property
    def page_size(self) -> int:
        raise NotImplementedError

    def page_offset(self, page_size: int) -> int:
        """Pages are shifted so that the middle, which starts right after the sink, is whole pages."""
        return (-self.sink) % self.page_size

    def page_list(self, page_table: jax.Array, n: jax.Array, middle: jax.Array, middle_valid: jax.Array
                  ) -> PageList:
        """The page list of the sink pages, the middle pages `middle` int32[B, Hkv, S] (j: the middle's page j,
        page-table entry sink_pages + j; read where middle_valid bool[B, Hkv, S]; S may be 0) and the local pages
        (the local window and the trailing partial page), for page_table int32[B, W], n int32[B] cached tokens."""
        import jax.numpy as jnp

        from kinetics_jax.attention import selection

        ps, offset = self.page_size, self.page_offset(self.page_size)
        rows, hkv = middle.shape[:2]
        sink_pages = ceil_div(self.sink, ps)
        parts = [jnp.broadcast_to(jnp.arange(sink_pages, dtype=jnp.int32), (rows, hkv, sink_pages)),
                 sink_pages + middle]
        valid_parts = [parts[0] * ps < (n + offset)[:, None, None], middle_valid]
        local = (sink_pages + self.candidate_blocks(n, jnp)[:, None, None]
                 + jnp.arange(ceil_div(self.local + ps - 1, ps), dtype=jnp.int32))
        local = jnp.broadcast_to(local, (rows, hkv, local.shape[-1]))
        parts.append(local)
        valid_parts.append(local * ps < (n + offset)[:, None, None])
        return selection.explicit_pages(page_table, jnp.concatenate(parts, axis=-1),
                                        jnp.concatenate(valid_parts, axis=-1),
                                        selection.window(jnp.full_like(n, offset), n + offset))


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockTopK(BlockPolicy):
    """sink + local + block_size x block_topk tokens per step once active: the block_topk best blocks, each one
    cache page. Label: block_topk-<tokens> with tokens = block_size x block_topk (a whole number of blocks)."""

    kind = "block_topk"
    int_fields = {"block_topk": 1, "block_size": 1, "sink": 0, "local": 0}
    score: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score not in SCORES:
            raise self.error("score", f"must be one of {SCORES}")

    @property
    def summaries(self) -> tuple[str, ...]:  # type: ignore[override]
        """The mean key ("mean") or the channel-wise key min and max ("quest"), per page and layer."""
        return ("k_mean",) if self.score == "mean" else ("k_min", "k_max")

    @property
    def scoring_flops(self) -> int:  # type: ignore[override]
        """Per block and KV-head channel: qbar . mean ("mean"), qbar . (min + max) / 2 + mean|q| . (max - min) / 2
        ("quest")."""
        return 2 if self.score == "mean" else 4

    def prompt_blocks(self, prompt_len: int, page_size: int) -> int:
        """Full pages of a prompt past the sink pages: the candidates its samples share."""
        sink_pages = -(-self.sink // self.block_size)
        return max((prompt_len + self.page_offset(page_size)) // self.block_size - sink_pages, 0)

    @property
    def page_size(self) -> int:
        return self.block_size

    def keep_mask(self, q, k, lengths):
        import jax.numpy as jnp

        from kinetics_jax.attention import reference

        b, t_max, hkv, _ = k.shape
        t = jnp.arange(t_max)[None, None, :]
        n = lengths[:, None, None]
        valid = jnp.broadcast_to(t < n, (b, hkv, t_max))
        bs = self.block_size
        n_full = self.candidate_blocks(n, jnp)  # [B, 1, 1]
        num_blocks = max(t_max - self.sink, 0) // bs
        if num_blocks == 0:
            return valid
        span = k[:, self.sink:self.sink + num_blocks * bs].astype(jnp.float32)
        blocks = span.reshape(b, num_blocks, bs, hkv, -1)
        qg = q.reshape(b, hkv, q.shape[1] // hkv, -1).astype(jnp.float32)
        if self.score == "mean":
            mean_key = jnp.mean(blocks, axis=2).astype(k.dtype).astype(jnp.float32)  # kept in the cache dtype
            scores = jnp.einsum("bkgd,bjkd->bkgj", qg, mean_key)
        else:  # quest: per head sum_d max(q_d * min_d, q_d * max_d)
            lo, hi = jnp.min(blocks, axis=2), jnp.max(blocks, axis=2)  # [B, J, Hkv, D]
            scores = jnp.sum(jnp.maximum(qg[:, :, :, None] * jnp.swapaxes(lo, 1, 2)[:, :, None],
                                         qg[:, :, :, None] * jnp.swapaxes(hi, 1, 2)[:, :, None]), axis=-1)
        scores = jnp.mean(scores, axis=2)  # group mean: [B, Hkv, J]
        candidate = jnp.arange(num_blocks)[None, None, :] < n_full
        chosen_blocks = reference.top_mask(jnp.where(candidate, scores, -jnp.inf), self.block_topk)
        block_of = jnp.clip((t - self.sink) // bs, 0, num_blocks - 1)
        chosen = jnp.take_along_axis(chosen_blocks, jnp.broadcast_to(block_of, (b, hkv, t_max)), axis=-1)
        in_blocks = (t >= self.sink) & (t < self.sink + n_full * bs)
        return valid & (~in_blocks | chosen)

    def decode(self, q, step):
        pages = block_topk_pages(q, step.cache, step.layer, step.page_table, step.lengths, self, step.head_mean,
                                 step.num_samples, step.shared_pages)
        return step.read(q, pages), pages.tokens(step.page_size)[:, 0]


def group_means(q: jax.Array, num_kv_heads: int, quest: bool, head_mean: HeadMean | None = None
                ) -> tuple[jax.Array, jax.Array | None]:
    """(qbar, mean_g |q_g|) float32 [B, Hkv, D] of q [B, Hq, D] over each KV head's query group (the second only
    for the Quest score); `head_mean` completes them when a group is split over devices."""
    import jax.numpy as jnp

    b, hq, d = q.shape
    mean = head_mean or (lambda x: x)
    qg = q.reshape(b, num_kv_heads, hq // num_kv_heads, d).astype(jnp.float32)
    return mean(jnp.mean(qg, axis=2)), mean(jnp.mean(jnp.abs(qg), axis=2)) if quest else None


def block_scores(qbar: jax.Array, qabs: jax.Array | None, cache: KVCache, layer: jax.Array, page_table: jax.Array,
                 first: jax.Array, lo: jax.Array, hi: jax.Array, entries: int) -> jax.Array:
    """Group-mean scores float32[R, n, Hkv, entries] of the blocks first + c of page_table int32[R, W] (only
    lo[r] <= c < hi[r]; -inf for the others) for queries qbar [R, n, Hkv, D] (n queries per row of the table;
    the summaries are read once for all n).
    "mean": qbar . mean key; "quest": mean_g sum_d max(q_gd min_d, q_gd max_d), computed as
    min . (qbar - qabs) / 2 + max . (qbar + qabs) / 2 with qabs = mean_g |q_g| (the same number: max(a x, a y)
    = a (x + y) / 2 + |a| (y - x) / 2 for x <= y), so no [G, C, D] term is built. The summaries are read by
    pallas_kernels.page_scores: exactly the listed rows."""
    from pallas_kernels import page_scores

    where = (layer, page_table, first, lo, hi)
    if cache.k_mean is not None:
        return page_scores.scores([qbar], [cache.k_mean], *where, entries=entries)
    return page_scores.scores([(qbar - qabs) / 2, (qbar + qabs) / 2], [cache.k_min, cache.k_max], *where,
                              entries=entries)


def block_topk_pages(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, lengths: jax.Array,
                     policy: BlockTopK, head_mean: HeadMean | None = None, num_samples: int = 1,
                     shared_pages: jax.Array | None = None) -> PageList:
    """Sink pages, the `block_topk` best full blocks of the middle, and the local pages (the local window plus
    the trailing partial block), per KV head. q [B, Hq, D]; the cache pages are shifted by policy.page_offset so
    that the sink fills pages 0 .. sink_pages - 1 exactly and block j is page-table entry sink_pages + j.
    num_samples, shared_pages int32[P]: B = P x num_samples rows whose first shared_pages[p] entries are the
    prompt's (their summaries are read once for the prompt's samples)."""
    import jax.numpy as jnp

    ps = policy.block_size
    width = page_table.shape[1]
    sink_pages = ceil_div(policy.sink, ps)
    chosen = min(policy.block_topk, max(width - sink_pages, 0))
    n = lengths.astype(jnp.int32)
    if not chosen:
        none = jnp.zeros((page_table.shape[0], cache.k.shape[1], 0), jnp.int32)
        return policy.page_list(page_table, n, none, none > 0)
    best, best_valid = _top_blocks(q, cache, layer, page_table, sink_pages, policy.candidate_blocks(n, jnp), chosen,
                                   head_mean, num_samples, shared_pages)
    return policy.page_list(page_table, n, best, best_valid)


def merge_top(state: tuple[jax.Array, jax.Array], scores: jax.Array, index: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """Folds scores float32[B, Hkv, C] of candidates index int32[C] (-inf: none) into a running top-k state
    (values float32[B, Hkv, k], indices int32[B, Hkv, k]): a stable sort by score (ties keep the lower index,
    as lax.top_k), no gather."""
    import jax
    import jax.numpy as jnp

    values, best = state
    k = values.shape[-1]
    index = jnp.broadcast_to(index, scores.shape)
    neg, ids = jax.lax.sort((-jnp.concatenate([values, scores], axis=-1), jnp.concatenate([best, index], axis=-1)),
                            dimension=-1, num_keys=1, is_stable=True)
    return -neg[..., :k], ids[..., :k]


def _top_blocks(q: jax.Array, cache: KVCache, layer: jax.Array, page_table: jax.Array, first: int,
                n_full: jax.Array, chosen: int, head_mean: HeadMean | None, num_samples: int,
                shared_pages: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(the `chosen` best candidate indices int32[B, Hkv, chosen] in increasing order, which of them exist):
    candidate j < n_full[b] is block first + j of row b's page table; a running top-k over chunks of
    SCORE_CHUNK candidates, the loop's trip count set by the longest row. The prompt's own full pages past the
    sink (shared_pages) are scored first, from one read of their summaries for its num_samples rows."""
    import jax
    import jax.numpy as jnp

    b, _, d = q.shape
    hkv = cache.k.shape[1]
    width = page_table.shape[1]
    qbar, qabs = group_means(q, hkv, cache.k_mean is None, head_mean)
    chunk = min(SCORE_CHUNK, max(width - first, 1))
    step = jnp.arange(chunk, dtype=jnp.int32)

    state = (jnp.full((b, hkv, chosen), -jnp.inf, jnp.float32), jnp.zeros((b, hkv, chosen), jnp.int32))
    shared_end = jnp.zeros_like(n_full)
    if num_samples > 1 and shared_pages is not None:
        prompts = b // num_samples
        shared_end = jnp.minimum(jnp.repeat(jnp.maximum(shared_pages - first, 0), num_samples), n_full)
        limit = shared_end.reshape(prompts, num_samples)
        prompt_table = page_table[::num_samples]
        queries = lambda x: None if x is None else x.reshape(prompts, num_samples, hkv, d)

        def shared_body(i, state):
            hi = jnp.clip(jnp.max(limit, axis=1) - i * chunk, 0, chunk)
            scores = block_scores(queries(qbar), queries(qabs), cache, layer, prompt_table, first + i * chunk,
                                  jnp.zeros_like(hi), hi, chunk)                           # [P, N, Hkv, C]
            index = i * chunk + step
            scores = jnp.where(index < limit[:, :, None, None], scores, -jnp.inf).reshape(b, hkv, chunk)
            return merge_top(state, scores, index)

        state = jax.lax.fori_loop(0, ceil_div(jnp.max(shared_end), chunk), shared_body, state)

    def own_body(i, state):
        index = i * chunk + step
        lo = jnp.clip(shared_end - i * chunk, 0, chunk)
        hi = jnp.clip(n_full - i * chunk, 0, chunk)
        scores = block_scores(qbar[:, None], None if qabs is None else qabs[:, None], cache, layer, page_table,
                              first + i * chunk, lo, hi, chunk)[:, 0]
        return merge_top(state, scores, index)

    # Chunks are aligned at candidate 0 for every row: the rows' prompt parts (scored above) read nothing here.
    start = jnp.min(shared_end) // chunk
    values, best = jax.lax.fori_loop(start, ceil_div(jnp.max(n_full), chunk), own_body, state)
    best = jnp.sort(jnp.where(values > -jnp.inf, best, width), axis=-1)  # width: no candidate
    return best.astype(jnp.int32), best < width
