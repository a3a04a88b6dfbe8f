"""Decode: the step (every layer appends its K/V to the paged cache and attends through the policy), and the
loop that feeds the N samples of every prompt as one batch inside one `lax.while_loop` until each is done.

Step s feeds token s at position prompt + s and samples token s + 1: embed, per layer append K/V to the sample's
page and attend through its page table, logits, sample, stop checks. No Python runs per token, and the loop
exits as soon as every sample is done.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from kinetics_jax.attention import SharedPrefix, decode_attention
from kinetics_jax.cache import NULL_PAGE, KVCache, PagedLayout
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.sampling.request import DecodeInputs, DecodeStatic
from kinetics_jax.sampling.samplers import sample, sample_keys
from kinetics_jax.sampling.stops import EOS, LENGTH, REPETITION, RUNNING, repeated
from kinetics_jax.sharding import meshes, placement
from kinetics_jax.sharding.axes import BATCH, HEAD_DIM, HEADS, KV_HEADS


class _Rows(NamedTuple):
    """What each row's step reads besides the token: where its K/V go (page, slot int32[B]), its page table
    int32[B, M], its cached tokens lengths int32[B] (the current one included) and, per prompt, the entries its
    samples share (shared_pages int32[P], or None) or the rows' groups by shared prompt (prefix, or None)."""

    page: jax.Array
    slot: jax.Array
    page_table: jax.Array
    lengths: jax.Array
    shared_pages: jax.Array | None
    prefix: SharedPrefix | None

    def axes(self) -> "_Rows":
        rows = (BATCH,)
        prefix = None if self.prefix is None else SharedPrefix(rows, rows, rows, rows, self.prefix.width)
        return _Rows(rows, rows, (BATCH, None), rows, None if self.shared_pages is None else rows, prefix)


def decode_step(model: Qwen3ForCausalLM, cache: KVCache, tokens: jax.Array, positions: jax.Array,
                page_table: jax.Array, active: jax.Array, attention: AttentionConfig, num_samples: int = 1,
                shared_pages: jax.Array | None = None, mesh: Mesh | None = None, prefix: SharedPrefix | None = None
                ) -> tuple[jax.Array, KVCache, jax.Array]:
    """Feeds tokens int32[B] at positions int32[B]: appends their K/V to each sequence's page (and the summary of
    a page it fills) and attends through its page table with the `attention` policy. shared_pages int32[P]: the
    page-table entries the `num_samples` samples of each prompt share; prefix: the rows' groups by shared prompt
    in any other layout, one group per row at most (G = B; see decode_attention). Under a `mesh`
    the cache write, the page selection and the kernels run per shard (rows and pages split over "data",
    heads over "model"; page tables hold shard-local page ids, num_samples and shared_pages are per shard), and
    the mesh's devices say which platform the kernels are built for.
    `active` bool[B] (None: every row): a row that is not active reads no KV (its length is 0, its page list
    empty) and writes its K/V to the null page.
    Returns (logits [B, V], cache, KV tokens attended int32[L, B] by each layer and row, 0 for inactive rows)."""
    replicas = meshes.kv_replicas(model.config, mesh)
    layout = PagedLayout.of(attention, replicas)
    page, slot = layout.slot_of(page_table, positions)
    lengths = positions + 1
    if active is not None:  # None keeps host-known positions known while tracing (cost analysis)
        page, lengths = jnp.where(active, page, NULL_PAGE), jnp.where(active, lengths, 0)
    rows = _Rows(page, slot, page_table, lengths, shared_pages, prefix)
    head_mean = None if replicas == 1 else functools.partial(meshes.kv_head_mean, replicas=replicas)
    platform = meshes.platform(mesh)

    def local(q, k, v, layer, cache, rows):
        cache = cache.append(layer, rows.page, rows.slot, k, v)
        out, attended = decode_attention(q, cache, layer, rows.page_table, rows.lengths, attention,
                                         num_samples=num_samples, shared_pages=rows.shared_pages,
                                         prefix=rows.prefix, head_mean=head_mean, platform=platform)
        return out, cache, attended[:, None]

    cache_axes = layout.axes()
    q_axes, kv_axes = (BATCH, HEADS, HEAD_DIM), (BATCH, KV_HEADS, HEAD_DIM)
    step = placement.per_shard(local, mesh, (q_axes, kv_axes, kv_axes, None, cache_axes, rows.axes()),
                               (q_axes, cache_axes, (BATCH, KV_HEADS)))  # attended: one column per "model" shard

    def attend(q, k, v, layer, cache):
        k, v = (jnp.repeat(x[:, 0], replicas, axis=1) for x in (k, v))  # a KV head's copies (usually 1)
        out, cache, attended = step(q[:, 0], k, v, layer, cache, rows)
        attended = attended[:, 0] if active is None else jnp.where(active, attended[:, 0], 0)
        return out[:, None], cache, attended

    hidden, cache, ys = model.hidden_states(tokens[:, None], positions[:, None], attend, cache)
    return model.logits(hidden[:, 0]), cache, jnp.concatenate([y.reshape(-1, tokens.shape[0]) for y in ys])


@chex.dataclass(frozen=True)
class LoopState:
    """The decode loop's carry. step: int32 scalar (the next token fed is tokens[:, step]); tokens int32[B,
    buffer] (-1 after a row's end); done bool[B]; reason int32[B] (stops.RUNNING, EOS, LENGTH, REPETITION);
    generated int32[B] (tokens sampled, the first included); cache; attended int32[buffer, L] (KV tokens read by
    each layer at each step, summed over the running rows)."""

    step: jax.Array
    tokens: jax.Array
    done: jax.Array
    reason: jax.Array
    generated: jax.Array
    cache: KVCache
    attended: jax.Array


def decode_loop(model: Qwen3ForCausalLM, static: DecodeStatic, inputs: DecodeInputs, first_logits: jax.Array,
                cache: KVCache, max_new_tokens: jax.Array, seed: jax.Array) -> LoopState:
    """Samples each row's first token from its prompt's logits first_logits [P, V], then decodes until every row
    is done (an EOS id, max_new_tokens, or the repetition stop) or the budget is reached. Padding rows of a data
    split (inputs.row_real False) never run. Returns the final state (no row left RUNNING)."""
    n, mesh = static.samples_per_shard, static.mesh
    batch = inputs.prompt_ids.shape[0] * n

    def draw(logits: jax.Array, step: jax.Array) -> jax.Array:
        keys = sample_keys(seed, inputs.row_streams, inputs.row_samples, step)
        return sample(logits, keys, static.sampling, static.vocab_size)

    eos = jnp.asarray(static.eos_token_ids or (-1,), jnp.int32)
    first = draw(jnp.repeat(first_logits, n, axis=0), jnp.int32(0))
    first_eos = jnp.isin(first, eos)
    done = first_eos | (max_new_tokens <= 1) | ~inputs.row_real
    state = LoopState(step=jnp.int32(0), tokens=jnp.full((batch, static.buffer), -1, jnp.int32).at[:, 0].set(first),
                      done=done, reason=jnp.where(first_eos, EOS, jnp.where(done, LENGTH, RUNNING)).astype(jnp.int32),
                      generated=jnp.ones((batch,), jnp.int32), cache=cache,
                      attended=jnp.zeros((static.buffer, model.config.num_hidden_layers), jnp.int32))
    base = jnp.repeat(inputs.prompt_lengths, n)  # a row's cache length before decode step 0

    def cond(s: LoopState) -> jax.Array:
        return (s.step < max_new_tokens - 1) & ~jnp.all(s.done)

    def body(s: LoopState) -> LoopState:
        active = ~s.done
        logits, cache, counts = decode_step(model, s.cache, jnp.maximum(s.tokens[:, s.step], 0), base + s.step,
                                            inputs.page_table, active, static.attention, n, inputs.shared_pages,
                                            mesh)
        counts = jnp.sum(counts, axis=1)
        nxt = draw(logits, s.step + 1)
        tokens = s.tokens.at[:, s.step + 1].set(jnp.where(active, nxt, -1))
        generated = s.generated + active
        hit_eos = active & jnp.isin(nxt, eos)
        hit_len = active & ~hit_eos & (generated >= max_new_tokens)
        reason = jnp.where(hit_eos, EOS, jnp.where(hit_len, LENGTH, s.reason))
        done = s.done | hit_eos | hit_len
        if static.repetition is not None and static.buffer >= static.repetition.window:
            looped = active & ~done & repeated(tokens, generated, static.repetition)
            reason = jnp.where(looped, REPETITION, reason)
            done = done | looped
        return LoopState(step=s.step + 1, tokens=tokens, done=done, reason=reason, generated=generated, cache=cache,
                         attended=s.attended.at[s.step].set(counts))

    state = jax.lax.while_loop(cond, body, state)
    return state.replace(reason=jnp.where(state.reason == RUNNING, LENGTH, state.reason))
