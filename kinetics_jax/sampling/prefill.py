"""Prefill: one dense causal pass over the right-padded prompts, each layer's K/V written into a new paged cache
inside the layer scan (full prompt pages once, the partial last page once per sample)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from kinetics_jax.cache import KVCache, PagedLayout
from kinetics_jax.checks import ceil_div
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.model.attention import causal_attention
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.sharding import meshes, placement
from kinetics_jax.sharding.axes import BATCH, HEAD_DIM, KV_HEADS, SEQUENCE


def prefill(model: Qwen3ForCausalLM, prompt_ids: jax.Array, prompt_lengths: jax.Array, writes: jax.Array,
            pool_pages: int, attention: AttentionConfig, mesh: Mesh | None = None) -> tuple[jax.Array, KVCache]:
    """`prefill_into` a new cache of `pool_pages` pages (PagedLayout.of(attention): its page size, offset and
    summaries; under a `mesh` the pool is split over "data" and the KV heads over "model")."""
    layout = PagedLayout.of(attention, meshes.kv_replicas(model.config, mesh))
    cache = layout.zeros(model.config, pool_pages, model.dtype)
    if mesh is not None:
        cache = placement.constrain(cache, layout.axes(), mesh)
    return prefill_into(model, cache, prompt_ids, prompt_lengths, writes, attention, mesh)


def prefill_into(model: Qwen3ForCausalLM, cache: KVCache, prompt_ids: jax.Array, prompt_lengths: jax.Array,
                 writes: jax.Array, attention: AttentionConfig, mesh: Mesh | None = None
                 ) -> tuple[jax.Array, KVCache]:
    """Dense causal pass over right-padded prompts int32[P, T]. Inside the layer scan, each layer's K/V go
    straight into the paged `cache` (laid out by PagedLayout.of(attention)) through the page writes
    int32[3, n]: (destination page, source page = prompt * pages_per_prompt + block, whether the page is
    full). Under a `mesh` the prompts, the writes and the pool are split over "data" (each shard's writes hold
    its local page and prompt indices) and the KV heads over "model" (copied meshes.kv_replicas times when
    "model" is larger than the KV head count). Returns (logits [P, V] at each prompt's last token, cache)."""
    num_prompts, prompt_len = prompt_ids.shape
    valid = jnp.arange(prompt_len)[None, :] < prompt_lengths[:, None]
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), prompt_ids.shape)
    replicas = meshes.kv_replicas(model.config, mesh)
    layout = PagedLayout.of(attention, replicas)
    blocks = ceil_div(prompt_len + layout.page_offset, layout.page_size)  # source pages per prompt
    cache_axes = layout.axes()

    def write(cache: KVCache, layer: jax.Array, k: jax.Array, v: jax.Array, writes: jax.Array) -> KVCache:
        dst, src, full = writes
        return cache.write_prompt(layer, dst, layout.as_pages(k, blocks), layout.as_pages(v, blocks), src,
                                  full.astype(bool))

    kv_axes = (BATCH, SEQUENCE, KV_HEADS, HEAD_DIM)
    write = placement.per_shard(write, mesh, (cache_axes, None, kv_axes, kv_axes, (None, BATCH)), cache_axes)

    def attend(q, k, v, layer, cache):
        out = causal_attention(q, k, v, valid)
        k, v = (jnp.repeat(x, replicas, axis=2) for x in (k, v))  # a KV head's copies (usually 1)
        return out, write(cache, layer, k, v, writes), None

    hidden, cache, _ = model.hidden_states(prompt_ids, positions, attend, cache)
    return model.logits(hidden[jnp.arange(num_prompts), prompt_lengths - 1]), cache
