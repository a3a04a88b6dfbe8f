"""Oracle top-k: the `topk` cached tokens with the highest group-mean logit, plus the sink and the local window.

The upper bound of token-sparse attention: it scores every cached key at every step (so it saves no memory
traffic); its selection is not priced by the cost model. It runs in XLA only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kinetics_jax.policies.base import Policy, register

ORACLE_CHUNK = 512  # tokens the oracle scores per loop iteration


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class OracleTopK(Policy):
    """sink + topk + local tokens per step once n > sink + topk + local (below, the top-k holds the whole
    middle: dense). Chosen per KV head by the group-mean logit q.k over the middle [sink, n - local)."""

    kind = "topk"
    budget_field = "topk"
    skip_when_inactive = False  # below its threshold the top-k holds the whole middle: the same tokens
    backends = ("xla",)  # an oracle that scores every cached key: no Pallas kernel
    int_fields = {"topk": 1, "sink": 0, "local": 0}
    why = {"topk": "a budget of 0 attends nothing"}
    topk: int
    sink: int = 4
    local: int = 0

    @property
    def budget(self) -> int:
        return self.sink + self.topk + self.local

    def attended(self, n: Any, xp: Any = np) -> Any:
        return xp.minimum(n, self.budget)

    def keep_mask(self, q, k, lengths):
        import jax.numpy as jnp

        from kinetics_jax.attention import reference

        t = jnp.arange(k.shape[1])[None, None, :]
        n = lengths[:, None, None]
        valid = jnp.broadcast_to(t < n, (k.shape[0], k.shape[2], k.shape[1]))
        middle = (t >= self.sink) & (t < n - self.local) & valid
        scores = jnp.where(middle, jnp.mean(reference.group_logits(q, k), axis=2), -jnp.inf)
        active = n > self.budget
        return valid & (~active | ~middle | reference.top_mask(scores, self.topk))

    def decode(self, q, step):
        """Reads every cached key of the middle in chunks of ORACLE_CHUNK tokens (a running top-k of group-mean
        logits, as many iterations as the longest middle needs), then attends the sink, the chosen tokens and
        the local window."""
        import jax
        import jax.numpy as jnp

        from kinetics_jax.attention import selection
        from pallas_kernels.paged_decode import ops as kernels

        if step.head_mean is not None:
            raise ValueError("the oracle topk scores every key with the whole query group; it needs a 'model' mesh "
                             "axis that divides the KV heads")
        cache, layer, page_table = step.cache, step.layer, step.page_table
        b, hq, d = q.shape
        hkv = cache.k.shape[1]
        n = step.lengths.astype(jnp.int32)
        mid_lo, mid_hi = self.sink, jnp.maximum(n - self.local, self.sink)
        qg = q.reshape(b, hkv, hq // hkv, d)
        chunk = jnp.arange(ORACLE_CHUNK, dtype=jnp.int32)

        def body(i, state):
            values, best = state
            tokens = jnp.broadcast_to((mid_lo + i * ORACLE_CHUNK + chunk)[None, None, :], (b, hkv, ORACLE_CHUNK))
            keys = _token_kv(cache.k, layer, page_table, tokens)                              # [B, Hkv, C, D]
            logits = jnp.mean(jnp.einsum("bkgd,bkcd->bkgc", qg, keys, preferred_element_type=jnp.float32), axis=2)
            logits = jnp.where(tokens < mid_hi[:, None, None], logits, -jnp.inf)
            values, top = jax.lax.top_k(jnp.concatenate([values, logits], axis=-1), self.topk)
            return values, jnp.take_along_axis(jnp.concatenate([best, tokens], axis=-1), top, axis=-1)

        state = (jnp.full((b, hkv, self.topk), -jnp.inf, jnp.float32), jnp.zeros((b, hkv, self.topk), jnp.int32))
        trips = -(-jnp.max(mid_hi - mid_lo) // ORACLE_CHUNK)
        values, chosen = jax.lax.fori_loop(0, trips, body, state)
        picked = values > -jnp.inf
        # The chosen tokens: gathered one by one, one partial softmax.
        scores = jnp.einsum("bkgd,bktd->bkgt", qg, _token_kv(cache.k, layer, page_table, chosen),
                            preferred_element_type=jnp.float32) * d ** -0.5
        scores = jnp.where(picked[:, :, None, :], scores, -jnp.inf)
        m = jnp.max(scores, axis=-1)
        m_safe = jnp.where(m == -jnp.inf, 0.0, m)
        p = jnp.exp(scores - m_safe[..., None])
        l = jnp.sum(p, axis=-1)
        values_v = jnp.where(picked[..., None], _token_kv(cache.v, layer, page_table, chosen), 0)
        o_top = jnp.einsum("bkgt,bktd->bkgd", p.astype(values_v.dtype), values_v,
                           preferred_element_type=jnp.float32)
        o_top = o_top / jnp.where(l > 0, l, 1.0)[..., None]
        lse_top = jnp.where(l > 0, m_safe + jnp.log(l), -jnp.inf)
        # The sink and the local window: a page list, as sliding_window reads them.
        ends = selection.ends_pages(page_table, n, self.sink, mid_hi, self.local, step.page_size)
        o_ends, lse_ends = kernels.paged_decode_partials(qg, cache.k, cache.v, layer, ends, num_splits=1,
                                                         implementation="xla")
        out, _ = kernels.merge_partials(jnp.concatenate([o_ends, o_top[:, :, None]], axis=2),
                                        jnp.concatenate([lse_ends, lse_top[:, :, None]], axis=2), axis=2)
        attended = jnp.minimum(n, self.sink) + jnp.maximum(n - mid_hi, 0) + jnp.sum(picked[:, 0], axis=-1,
                                                                                     dtype=jnp.int32)
        return out.reshape(b, hq, d).astype(q.dtype), attended


def _token_kv(pool, layer, page_table, tokens):
    """pool [L, Hkv, P, ps, D] at tokens int32[B, Hkv, T] of each row's sequence (page_offset 0) -> [B, Hkv, T, D]."""
    import jax.numpy as jnp

    ps, width = pool.shape[3], page_table.shape[1]
    pages = jnp.take_along_axis(page_table[:, None, :], jnp.clip(tokens // ps, 0, width - 1), axis=-1)
    heads = jnp.arange(pool.shape[1])[None, :, None]
    return pool[layer, heads, pages, tokens % ps]
