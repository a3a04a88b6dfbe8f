"""Pure-JAX decode attention for every policy over contiguous KV: the specification.

Written straight from the token-level definitions in `policies.py` (KINETICS.md §3), with no pages, summaries or
kernels, so that the paged selection and the Pallas kernels can be tested against it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kinetics_jax.attention.policies import AttentionConfig


def _group_logits(q: jax.Array, k: jax.Array) -> jax.Array:
    """q [B, Hq, D], k [B, T, Hkv, D] -> float32 logits [B, Hkv, G, T] (unscaled), G = Hq / Hkv."""
    b, hq, d = q.shape
    hkv = k.shape[2]
    return jnp.einsum("bkgd,btkd->bkgt", q.reshape(b, hkv, hq // hkv, d), k, preferred_element_type=jnp.float32)


def _top_mask(scores: jax.Array, k: int) -> jax.Array:
    """bool mask of the k best entries along the last axis (-inf entries never chosen; ties: lowest index)."""
    k = min(k, scores.shape[-1])
    values, idx = jax.lax.top_k(scores, k)
    flat_idx = idx.reshape(-1, k)
    rows = jnp.arange(flat_idx.shape[0])[:, None]
    mask = jnp.zeros((flat_idx.shape[0], scores.shape[-1]), bool)
    mask = mask.at[rows, flat_idx].set(values.reshape(-1, k) > -jnp.inf)
    return mask.reshape(scores.shape)


def keep_mask(q: jax.Array, k: jax.Array, lengths: jax.Array, config: AttentionConfig) -> jax.Array:
    """bool[B, Hkv, T]: the tokens each KV head attends. q [B, Hq, D], k [B, T, Hkv, D], lengths int32[B]."""
    b, t_max, hkv, _ = k.shape
    t = jnp.arange(t_max)[None, None, :]
    n = lengths[:, None, None]
    valid = jnp.broadcast_to(t < n, (b, hkv, t_max))
    if config.kind == "dense":
        return valid
    sink = t < config.sink
    if config.kind == "sliding_window":
        return valid & (sink | (t >= n - config.local))
    if config.kind == "topk":
        middle = ~sink & (t < n - config.local) & valid
        scores = jnp.where(middle, jnp.mean(_group_logits(q, k), axis=2), -jnp.inf)
        active = n > config.sink + config.topk + config.local
        return valid & (~active | ~middle | _top_mask(scores, config.topk))
    # block_topk: blocks j = 0, 1, ... cover [sink + j * bs, sink + (j + 1) * bs); the first n_full are candidates.
    bs = config.block_size
    n_full = jnp.maximum(n - config.local - config.sink, 0) // bs  # [B, 1, 1]
    num_blocks = max(t_max - config.sink, 0) // bs
    if num_blocks == 0:
        return valid
    span = k[:, config.sink:config.sink + num_blocks * bs].astype(jnp.float32)
    blocks = span.reshape(b, num_blocks, bs, hkv, -1)
    qg = q.reshape(b, hkv, q.shape[1] // hkv, -1).astype(jnp.float32)
    if config.score == "mean":
        mean_key = jnp.mean(blocks, axis=2).astype(k.dtype).astype(jnp.float32)  # kept in the cache dtype
        block_scores = jnp.einsum("bkgd,bjkd->bkgj", qg, mean_key)
    else:  # quest: per head sum_d max(q_d * min_d, q_d * max_d)
        lo, hi = jnp.min(blocks, axis=2), jnp.max(blocks, axis=2)  # [B, J, Hkv, D]
        block_scores = jnp.sum(jnp.maximum(qg[:, :, :, None] * jnp.swapaxes(lo, 1, 2)[:, :, None],
                                           qg[:, :, :, None] * jnp.swapaxes(hi, 1, 2)[:, :, None]), axis=-1)
    block_scores = jnp.mean(block_scores, axis=2)  # group mean: [B, Hkv, J]
    candidate = jnp.arange(num_blocks)[None, None, :] < n_full
    chosen_blocks = _top_mask(jnp.where(candidate, block_scores, -jnp.inf), config.block_topk)
    block_of = jnp.clip((t - config.sink) // bs, 0, num_blocks - 1)
    chosen = jnp.take_along_axis(chosen_blocks, jnp.broadcast_to(block_of, (b, hkv, t_max)), axis=-1)
    in_blocks = ~sink & (t < config.sink + n_full * bs)
    return valid & (~in_blocks | chosen)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, keep: jax.Array) -> jax.Array:
    """Softmax attention of q [B, Hq, D] over the tokens keep bool[B, Hkv, T] of k, v [B, T, Hkv, D]. Scores and
    softmax in float32; probabilities cast to v's dtype before the value product. Returns [B, Hq, D], q.dtype."""
    b, hq, d = q.shape
    scores = _group_logits(q, k) * (d ** -0.5)
    scores = jnp.where(keep[:, :, None, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgt,btkd->bkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, hq, d).astype(q.dtype)


def reference_decode(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, config: AttentionConfig
                     ) -> jax.Array:
    """One decode step of `config`'s policy. q [B, Hq, D] (rotated), k, v [B, T, Hkv, D], lengths int32[B] (the
    tokens 0 .. length-1 are cached). Returns [B, Hq, D] in q's dtype."""
    return masked_attention(q, k, v, keep_mask(q, k, lengths, config))
