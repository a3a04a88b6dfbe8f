"""Qwen3-MoE sparse block: a softmax top-k router and SwiGLU experts, with no shared expert.

Dispatch is sort-based: the (token, expert) assignments are sorted by expert so each expert's tokens are
contiguous, and the three expert matmuls run as grouped matmuls (`jax.lax.ragged_dot`). Compute is therefore
proportional to tokens * top_k, not tokens * num_experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kinetics_jax.config import Qwen3Config
from kinetics_jax.model.layers import DType, param
from kinetics_jax.sharding.axes import EMBED, EXPERTS, MLP


def route(logits: jax.Array, top_k: int, normalize: bool, dtype: DType) -> tuple[jax.Array, jax.Array]:
    """Router: logits [N, E] -> (weights [N, k] in `dtype`, expert ids int32[N, k]).

    Softmax in float32 over all experts, then top-k; with `normalize` (norm_topk_prob) the k weights are divided
    by their sum. As transformers' Qwen3MoeTopKRouter.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights.astype(dtype), experts.astype(jnp.int32)


class MoE(nnx.Module):
    def __init__(self, config: Qwen3Config, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        h, m, e = config.hidden_size, config.moe_intermediate_size, config.num_experts
        self.router = param(rngs, (h, e), (EMBED, EXPERTS), param_dtype)
        self.gate_proj = param(rngs, (e, h, m), (EXPERTS, EMBED, MLP), param_dtype)
        self.up_proj = param(rngs, (e, h, m), (EXPERTS, EMBED, MLP), param_dtype)
        self.down_proj = param(rngs, (e, m, h), (EXPERTS, MLP, EMBED), param_dtype)
        self.top_k = config.num_experts_per_tok
        self.normalize = config.norm_topk_prob
        self.num_experts = e
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., hidden] -> [..., hidden]."""
        dt, k = self.dtype, self.top_k
        tokens = x.reshape(-1, x.shape[-1])                                   # [N, H]
        weights, experts = route(tokens @ self.router[...].astype(dt), k, self.normalize, dt)
        flat_experts = experts.reshape(-1)                                    # [N*k], row r is token r // k
        order = jnp.argsort(flat_experts, stable=True)
        token_of_row = order // k
        group_sizes = jnp.bincount(flat_experts, length=self.num_experts).astype(jnp.int32)
        xs = tokens[token_of_row]                                             # [N*k, H], grouped by expert
        hidden = (jax.nn.silu(jax.lax.ragged_dot(xs, self.gate_proj[...].astype(dt), group_sizes))
                  * jax.lax.ragged_dot(xs, self.up_proj[...].astype(dt), group_sizes))
        ys = jax.lax.ragged_dot(hidden, self.down_proj[...].astype(dt), group_sizes)  # [N*k, H]
        ys = ys * weights.reshape(-1)[order][:, None]
        out = jnp.zeros(tokens.shape, jnp.float32).at[token_of_row].add(ys.astype(jnp.float32))
        return out.astype(dt).reshape(x.shape)
