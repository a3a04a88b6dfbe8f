"""Sliding window: the first `sink` tokens and the last `local` tokens (StreamingLLM's attention sinks)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kinetics_jax.policies.base import Policy, register


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class SlidingWindow(Policy):
    """sink + local tokens per step once n > sink + local (dense below). Label: sliding_window-<local>."""

    kind = "sliding_window"
    budget_field = "local"
    int_fields = {"sink": 0, "local": 1}
    why = {"local": "a budget of 0 attends nothing"}
    local: int
    sink: int = 4

    @property
    def budget(self) -> int:
        return self.sink + self.local

    def attended(self, n: Any, xp: Any = np) -> Any:
        return xp.minimum(n, self.budget)

    def keep_mask(self, q, k, lengths):
        import jax.numpy as jnp

        t = jnp.arange(k.shape[1])[None, None, :]
        n = lengths[:, None, None]
        return jnp.broadcast_to((t < n) & ((t < self.sink) | (t >= n - self.local)),
                                (k.shape[0], k.shape[2], k.shape[1]))

    def decode(self, q, step):
        import jax.numpy as jnp

        from kinetics_jax.attention import selection

        n = step.lengths.astype(jnp.int32)
        pages = selection.ends_pages(step.page_table, n, self.sink, jnp.maximum(n - self.local, self.sink),
                                     self.local, step.page_size)
        return step.read(q, pages), pages.tokens(step.page_size)[:, 0]
