"""Dense attention: every cached token, at every step (the baseline; prefill and `dense_layers` always are)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kinetics_jax.policies.base import Policy, register


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Dense(Policy):
    """All n cached tokens: `attended(n) = n`, never active; the engine reads it through the dense page list (or
    the shared-prefix cascade when samples share a prompt)."""

    kind = "dense"
    sparse = False

    def attended(self, n: Any, xp: Any = np) -> Any:
        return n

    def keep_mask(self, q, k, lengths):
        import jax.numpy as jnp

        b, t_max, hkv, _ = k.shape
        return jnp.broadcast_to(jnp.arange(t_max)[None, None, :] < lengths[:, None, None], (b, hkv, t_max))
