"""The continuous engine's compiled programs: a prefill of one prompt per data shard into that shard's page pool,
the first tokens of a prompt's newly admitted samples, and a decode chunk of up to K steps over the engine's
fixed slots.

Every shape that touches a row's numerics is the engine's, not its neighbours': a prompt is prefilled alone in
its shard at its own length bucket, the chunk always runs `max_num_seqs` rows over page tables of one width, and
an empty or finished slot reads no KV (its length is 0). So a sample's tokens do not depend on its slot, on the
sequences beside it, on arrival order or on preemption.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from kinetics_jax.attention import SharedPrefix
from kinetics_jax.cache import KVCache, PagedLayout
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.sampling.decode import decode_step
from kinetics_jax.sampling.prefill import prefill_into
from kinetics_jax.sampling.samplers import SamplingConfig, sample, sample_keys
from kinetics_jax.sampling.scheduler import PlacedSlots
from kinetics_jax.sampling.stops import EOS, LENGTH, REPETITION, RUNNING, RepetitionStop, repeated
from kinetics_jax.sharding import meshes, placement
from kinetics_jax.sharding.axes import BATCH, DATA


@dataclasses.dataclass(frozen=True)
class EngineStatic:
    """What shapes the engine's programs (hashable: a static jit argument). max_num_seqs: decode slots; chunk:
    steps per decode chunk; buffer: the per-step counter rows and the token history of the repetition stop
    (>= max_new_tokens); pool_pages: the whole page pool, data shards x pages per shard (each shard's null page
    included); share_width: the places of a shared-prompt read (attention.SharedPrefix; 1: every row reads its
    prompt's pages itself)."""

    graphdef: nnx.GraphDef
    mesh: Mesh
    sampling: SamplingConfig
    attention: AttentionConfig
    max_num_seqs: int
    chunk: int
    buffer: int
    pool_pages: int
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    repetition: RepetitionStop | None
    share_width: int = 1

    def __post_init__(self) -> None:  # jit hashes its static argument at every call: hash the graphdef once
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self))))

    def __hash__(self) -> int:
        return self._hash

    def layout(self, model_config) -> PagedLayout:
        return PagedLayout.of(self.attention, meshes.kv_replicas(model_config, self.mesh))


class EngineState(NamedTuple):
    """The device state kept across calls (donated to each): cache; attended int32[buffer, L] (KV tokens read
    by each layer at each sample step j, summed over the rows that ran it); history int32[S, buffer] (each
    slot's generated tokens, -1 after its end; [S, 0] without the repetition stop)."""

    cache: KVCache
    attended: jax.Array
    history: jax.Array


@functools.partial(jax.jit, static_argnames=("static", "config", "dtype"))
def _empty_state(static: EngineStatic, config, dtype) -> EngineState:
    layout = static.layout(config)
    cache = placement.constrain(layout.zeros(config, static.pool_pages, dtype), layout.axes(), static.mesh)
    history = static.buffer if static.repetition is not None else 0
    return EngineState(cache, jnp.zeros((static.buffer, config.num_hidden_layers), jnp.int32),
                       jnp.full((static.max_num_seqs, history), -1, jnp.int32))


def empty_state(static: EngineStatic, model: Qwen3ForCausalLM) -> EngineState:
    """A zero cache of static.pool_pages pages (placed on the mesh), zero counters and an empty history."""
    return _empty_state(static, model.config, jnp.dtype(model.dtype))


class PrefillRows(NamedTuple):
    """One prefill call's inputs, a row per data shard (D rows; a shard with nothing to prefill gets a
    one-token dummy whose K/V go to its null page): prompt_ids int32[D, T] (right-padded to the call's length
    bucket), prompt_lengths int32[D], writes int32[3, D * n] (each shard's page writes into its own pool,
    shard-major), streams int32[D] (the prompt's stream id, its uint32 bits)."""

    prompt_ids: np.ndarray
    prompt_lengths: np.ndarray
    writes: np.ndarray
    streams: np.ndarray

    @staticmethod
    def axes() -> "PrefillRows":
        return PrefillRows((BATCH, None), (BATCH,), (None, BATCH), (BATCH,))

    def placed(self, mesh: Mesh) -> "PrefillRows":
        return PrefillRows(*(placement.put(x, axes, mesh) for x, axes in zip(self, self.axes())))


def _prefill_impl(static: EngineStatic, params: nnx.State, engine: EngineState, rows: PrefillRows
                  ) -> tuple[EngineState, jax.Array]:
    """Prefills one prompt per data shard (see PrefillRows) into the shards' pools. Returns (state, each
    prompt's last-token logits [D, V], replicated)."""
    model: Qwen3ForCausalLM = nnx.merge(static.graphdef, params)
    logits, cache = prefill_into(model, engine.cache, rows.prompt_ids, rows.prompt_lengths, rows.writes,
                                 static.attention, static.mesh)
    return engine._replace(cache=cache), jax.lax.with_sharding_constraint(logits, placement.replicated(static.mesh))


prefill_prompt = jax.jit(_prefill_impl, static_argnames=("static",), donate_argnames=("engine",))


def _draw_impl(static: EngineStatic, logits: jax.Array, stream: jax.Array, samples: jax.Array, seed: jax.Array
               ) -> jax.Array:
    """The first tokens int32[M] of samples int32[M] of one prompt, from its last-token logits [V] (keys
    (seed, stream, sample, 0)); M is a bucket of the samples admitted at once (at most max_num_seqs)."""
    m = samples.shape[0]
    keys = sample_keys(seed, jnp.broadcast_to(stream, (m,)), samples, jnp.int32(0))
    first = sample(jnp.broadcast_to(logits, (m, logits.shape[-1])), keys, static.sampling, static.vocab_size)
    return jax.lax.with_sharding_constraint(first, placement.replicated(static.mesh))


draw_first = jax.jit(_draw_impl, static_argnames=("static",))


def _copy_pages(cache: KVCache, src: jax.Array, dst: jax.Array, layout: PagedLayout, mesh: Mesh) -> KVCache:
    """Page dst[i] := page src[i] in every layer of the K and V pools, in each data shard's own pool (src and
    dst int32[S], shard-local ids; the null page takes the padding copies). A copied page is a partial prompt
    page: it has no summaries yet."""
    def local(cache: KVCache, src: jax.Array, dst: jax.Array) -> KVCache:
        return cache._replace(k=cache.k.at[:, :, dst].set(cache.k[:, :, src]),
                              v=cache.v.at[:, :, dst].set(cache.v[:, :, src]))

    cache_axes = layout.axes()
    return placement.per_shard(local, mesh, (cache_axes, (BATCH,), (BATCH,)), cache_axes)(cache, src, dst)


class ChunkOutput(NamedTuple):
    """tokens int32[S, K] (sampled in the chunk; -1 where a row did not run), generated int32[S] (tokens
    sampled in all, the first included), reason int32[S] (stops.RUNNING, EOS, LENGTH, REPETITION)."""

    tokens: jax.Array
    generated: jax.Array
    reason: jax.Array


def _chunk_impl(static: EngineStatic, params: nnx.State, engine: EngineState, placed: PlacedSlots,
                max_new_tokens: jax.Array, seed: jax.Array, refill_after: jax.Array
                ) -> tuple[EngineState, ChunkOutput]:
    """Up to static.chunk decode steps over the slots; the loop ends early when no row runs, or once
    `refill_after` rows (int32 scalar) have finished in it, so that the host refills their slots. Step i feeds
    each running row's last token at its position, samples its next token (keys (seed, stream, sample,
    generated)), and stops it at an EOS id, max_new_tokens or the repetition stop."""
    model: Qwen3ForCausalLM = nnx.merge(static.graphdef, params)
    rows = placed.unpacked()
    cache = _copy_pages(engine.cache, rows.copy_from, rows.copy_to, static.layout(model.config), static.mesh)
    history = engine.history
    if static.repetition is not None:  # a fresh row's history: its first token, then nothing
        start = jnp.full(history.shape, -1, jnp.int32).at[:, 0].set(rows.tokens)
        history = jnp.where(rows.fresh[:, None], start, history)
    eos = jnp.asarray(static.eos_token_ids or (-1,), jnp.int32)
    s_ = static.max_num_seqs
    prefix = None
    if static.share_width > 1:  # the slots' groups by shared prompt, in shard-local row ids
        local = jnp.arange(s_, dtype=jnp.int32) % (s_ // static.mesh.shape[DATA])
        prefix = SharedPrefix(rows.leader, rows.place, local, rows.shared, static.share_width)

    class Carry(NamedTuple):
        i: jax.Array
        token: jax.Array
        position: jax.Array
        generated: jax.Array
        running: jax.Array
        reason: jax.Array
        out: jax.Array
        cache: KVCache
        attended: jax.Array
        history: jax.Array

    def cond(c: Carry) -> jax.Array:
        ended = jnp.sum(rows.active & ~c.running)
        return (c.i < static.chunk) & jnp.any(c.running) & (ended < refill_after)

    def body(c: Carry) -> Carry:
        logits, cache, counts = decode_step(model, c.cache, c.token, c.position, rows.page_table, c.running,
                                            static.attention, prefix=prefix, mesh=static.mesh)
        keys = sample_keys(seed, rows.streams, rows.samples, c.generated)
        nxt = jnp.where(c.running, sample(logits, keys, static.sampling, static.vocab_size), -1)
        step_row = jnp.where(c.running, c.generated - 1, static.buffer)  # the sample's decode step j
        attended = c.attended.at[step_row].add(counts.T, mode="drop")
        generated = c.generated + c.running
        hit_eos = c.running & jnp.isin(nxt, eos)
        hit_len = c.running & ~hit_eos & (generated >= max_new_tokens)
        reason = jnp.where(hit_eos, EOS, jnp.where(hit_len, LENGTH, c.reason))
        running = c.running & ~hit_eos & ~hit_len
        history = c.history
        if static.repetition is not None:
            history = history.at[jnp.arange(s_), jnp.where(c.running, c.generated, static.buffer)].set(
                nxt, mode="drop")
            if static.buffer >= static.repetition.window:
                looped = running & repeated(history, generated, static.repetition)
                reason = jnp.where(looped, REPETITION, reason)
                running = running & ~looped
        return Carry(c.i + 1, jnp.maximum(nxt, 0), c.position + c.running, generated, running, reason,
                     c.out.at[:, c.i].set(nxt), cache, attended, history)

    start = Carry(jnp.int32(0), rows.tokens, rows.positions, rows.generated, rows.active,
                  jnp.full((s_,), RUNNING, jnp.int32), jnp.full((s_, static.chunk), -1, jnp.int32), cache,
                  engine.attended, history)
    end = jax.lax.while_loop(cond, body, start)
    out = ChunkOutput(end.out, end.generated, end.reason)
    out = jax.lax.with_sharding_constraint(out, placement.replicated(static.mesh))
    return EngineState(end.cache, end.attended, end.history), out


decode_chunk = jax.jit(_chunk_impl, static_argnames=("static",), donate_argnames=("engine",))
