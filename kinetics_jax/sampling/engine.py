"""Generation: dense prefill once per prompt, then one jit-compiled decode loop over all prompts x samples.

    result = kj.generate(model, [prompt_ids, ...], num_samples=8, max_new_tokens=4096)

Data path: prompts (right-padded to a length bucket) run through the model once with causal attention; inside the
layer scan each layer's K/V are written into the paged cache in place (full prompt pages once, the partial last
page once per sample); the last prompt logits give each sample's first token. A single `lax.while_loop` then feeds the N samples of every prompt
as one batch: embed, per layer append K/V to the sample's page and attend through its page table, logits,
sample, stop checks. No Python runs per token, and the loop exits as soon as every sample is done.

Shape buckets (one compilation per bucket, see `_bucket`): prompt length -> next power of two (>= 16); the
token buffer -> next power of two >= max_new_tokens (the loop bound itself is a runtime value); page-table width
-> next power of two; cache pages -> multiple of 64; the prefill page writes -> next power of two. The batch
(prompts x samples) is exact.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax.sharding import AbstractMesh, Mesh

from kinetics_jax.attention import decode_attention
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.cache import NULL_PAGE, CachePlan, KVCache
from kinetics_jax.checks import checked_int
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.model.attention import causal_attention
from kinetics_jax.sampling.samplers import SamplingConfig, sample, sample_keys
from kinetics_jax.sharding import meshes, placement, planning
from kinetics_jax.sharding.axes import (BATCH, CACHE_POOL, CACHE_SUMMARY, DATA, HEAD_DIM, HEADS, KV_HEADS,
                                        SEQUENCE)

RUNNING, EOS, LENGTH, REPETITION = 0, 1, 2, 3
FINISH_REASONS = ("running", "eos", "length", "repetition")
ID_LIMIT = 2**32  # seeds and stream ids are uint32: [0, 2**32)
INT32_LIMIT = 2**31  # page ids and decode rows are int32 on device


@dataclasses.dataclass(frozen=True)
class RepetitionStop:
    """Stop a sample when its last `block` tokens occur `repeats` times among the `window // block` aligned
    blocks ending at the current token (Kinetics: 64-token blocks, 15 repeats, 1024-token window)."""

    block: int = 64
    repeats: int = 15
    window: int = 1024

    def __post_init__(self) -> None:
        for name in ("block", "repeats", "window"):
            object.__setattr__(self, name, checked_int(getattr(self, name), f"RepetitionStop.{name}"))
        if self.block < 1 or self.window % self.block or not 1 <= self.repeats <= self.window // self.block:
            raise ValueError(f"RepetitionStop needs block >= 1, window a multiple of block and "
                             f"1 <= repeats <= window / block; got {self}")


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """tokens int32[P, N, T] (-1 after a sample's end), lengths int32[P, N] (generated tokens, the stop token
    included), finish_reasons str[P, N] ("eos" | "length" | "repetition"), attended_tokens int64[steps, layers]:
    KV tokens read by each layer at each decode step, summed over the samples still running; prompt_lengths
    int[P]; attention: the policy the run used (the cost model reads it from here)."""

    tokens: np.ndarray
    lengths: np.ndarray
    finish_reasons: np.ndarray
    attended_tokens: np.ndarray
    prompt_lengths: np.ndarray
    attention: AttentionConfig = AttentionConfig()

    def sequences(self, p: int, s: int) -> list[int]:
        """The generated ids of sample s of prompt p."""
        return self.tokens[p, s, :self.lengths[p, s]].tolist()


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything that shapes the compiled program (hashable: it is a static jit argument)."""

    graphdef: nnx.GraphDef
    mesh: Mesh
    sampling: SamplingConfig
    attention: AttentionConfig
    num_samples: int  # per data shard
    buffer: int
    num_pages: int  # the whole pool: data shards x pages per shard
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    repetition: RepetitionStop | None


def _bucket(n: int, minimum: int = 1) -> int:
    """Next power of two >= max(n, minimum)."""
    return 1 << (max(n, minimum) - 1).bit_length()


def _memory_budget() -> int:
    """Bytes a KV cache may take: free accelerator memory, or half the host RAM on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _repeated(tokens: jax.Array, generated: jax.Array, stop: RepetitionStop) -> jax.Array:
    """bool[B]: the last `stop.block` generated tokens repeat `stop.repeats` times in the last window."""

    def one(row: jax.Array, n: jax.Array) -> jax.Array:
        window = jax.lax.dynamic_slice(row, (jnp.maximum(n - stop.window, 0),), (stop.window,))
        blocks = window.reshape(stop.window // stop.block, stop.block)
        same = jnp.all(blocks == blocks[-1], axis=-1)
        return (n >= stop.window) & (jnp.sum(same) >= stop.repeats)

    return jax.vmap(one)(tokens, generated)


def prefill(model: Qwen3ForCausalLM, prompt_ids: jax.Array, prompt_lengths: jax.Array, writes: jax.Array,
            num_pages: int, attention: AttentionConfig, mesh: Mesh | None = None) -> tuple[jax.Array, KVCache]:
    """Dense causal pass over right-padded prompts int32[P, T]. Inside the layer scan, each layer's K/V go
    straight into a new paged cache (page size, offset and summaries of `attention`) through the plan's page
    writes int32[3, n]: (destination page, source page = prompt * pages_per_prompt + block, whether the page is
    full). Under a `mesh` the prompts, the writes and the `num_pages` pool are split over "data" (each shard's
    writes hold its local page and prompt indices) and the KV heads over "model" (copied meshes.kv_replicas
    times when "model" is larger than the KV head count).
    Returns (logits [P, V] at each prompt's last token, cache)."""
    num_prompts, prompt_len = prompt_ids.shape
    valid = jnp.arange(prompt_len)[None, :] < prompt_lengths[:, None]
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), prompt_ids.shape)
    replicas = meshes.kv_replicas(model.config, mesh)
    ps, offset = attention.cache_page_size, attention.page_offset
    blocks = -(-(prompt_len + offset) // ps)  # source pages per prompt
    cache = KVCache.zeros(model.config, num_pages, ps, model.dtype, attention.summaries, replicas)
    cache_axes = _cache_axes(cache)
    if mesh is not None:
        cache = placement.constrain(cache, cache_axes, mesh)

    def write(cache: KVCache, layer: jax.Array, k: jax.Array, v: jax.Array, writes: jax.Array) -> KVCache:
        def pages(x: jax.Array) -> jax.Array:  # [P, T, Hkv, D] -> [P * blocks, Hkv, ps, D]
            p, t, h, d = x.shape
            x = jnp.pad(x, ((0, 0), (offset, blocks * ps - offset - t), (0, 0), (0, 0)))
            return x.reshape(p, blocks, ps, h, d).transpose(0, 1, 3, 2, 4).reshape(p * blocks, h, ps, d)

        dst, src, full = writes
        return cache.write_prompt(layer, dst, pages(k), pages(v), src, full.astype(bool))

    kv_axes = (BATCH, SEQUENCE, KV_HEADS, HEAD_DIM)
    write = placement.per_shard(write, mesh, (cache_axes, None, kv_axes, kv_axes, (None, BATCH)), cache_axes)

    def attend(q, k, v, layer, cache):
        out = causal_attention(q, k, v, valid)
        k, v = (jnp.repeat(x, replicas, axis=2) for x in (k, v))  # a KV head's copies (usually 1)
        return out, write(cache, layer, k, v, writes), None

    hidden, cache, _ = model.hidden_states(prompt_ids, positions, attend, cache)
    return model.logits(hidden[jnp.arange(num_prompts), prompt_lengths - 1]), cache


def _cache_axes(cache: KVCache) -> KVCache:
    """The logical axes of each KVCache field (None for absent summaries)."""
    summary = lambda x: None if x is None else CACHE_SUMMARY
    return KVCache(CACHE_POOL, CACHE_POOL, summary(cache.k_mean), summary(cache.k_min),
                   summary(cache.k_max))


def decode_step(model: Qwen3ForCausalLM, cache: KVCache, tokens: jax.Array, positions: jax.Array,
                page_table: jax.Array, active: jax.Array, attention: AttentionConfig, num_samples: int = 1,
                shared_pages: jax.Array | None = None, mesh: Mesh | None = None
                ) -> tuple[jax.Array, KVCache, jax.Array]:
    """Feeds tokens int32[B] at positions int32[B]: appends their K/V to each sequence's page (and the summary of
    a page it fills) and attends through its page table with the `attention` policy. shared_pages int32[P]: the
    page-table entries the `num_samples` samples of each prompt share (see decode_attention). Under a `mesh`
    the cache write, the page selection and the kernels run per shard (rows and pages split over "data",
    heads over "model"; page tables hold shard-local page ids, num_samples and shared_pages are per shard), and
    the mesh's devices say which platform the kernels are built for.
    Returns (logits [B, V], cache, KV tokens attended per layer int32[L], counting `active` rows only)."""
    batch, page_size, offset = tokens.shape[0], cache.page_size, attention.page_offset
    page = page_table[jnp.arange(batch), (positions + offset) // page_size]
    slot = (positions + offset) % page_size

    replicas = meshes.kv_replicas(model.config, mesh)
    head_mean = None if replicas == 1 else functools.partial(meshes.kv_head_mean, replicas=replicas)
    platform = meshes.platform(mesh)

    def local(q, k, v, layer, cache, page, slot, page_table, lengths, shared_pages):
        cache = cache.append(layer, page, slot, k, v)
        out, attended = decode_attention(q, cache, layer, page_table, lengths, attention, num_samples=num_samples,
                                         shared_pages=shared_pages, head_mean=head_mean, platform=platform)
        return out, cache, attended[:, None]

    rows, cache_axes = (BATCH,), _cache_axes(cache)
    q_axes, kv_axes = (BATCH, HEADS, HEAD_DIM), (BATCH, KV_HEADS, HEAD_DIM)
    step = placement.per_shard(
        local, mesh, (q_axes, kv_axes, kv_axes, None, cache_axes, rows, rows, (BATCH, None), rows,
                      None if shared_pages is None else rows),
        (q_axes, cache_axes, (BATCH, KV_HEADS)))  # attended: one column per "model" shard

    def attend(q, k, v, layer, cache):
        k, v = (jnp.repeat(x[:, 0], replicas, axis=1) for x in (k, v))  # a KV head's copies (usually 1)
        out, cache, attended = step(q[:, 0], k, v, layer, cache, page, slot, page_table, positions + 1,
                                    shared_pages)
        return out[:, None], cache, jnp.sum(jnp.where(active, attended[:, 0], 0))

    hidden, cache, ys = model.hidden_states(tokens[:, None], positions[:, None], attend, cache)
    return model.logits(hidden[:, 0]), cache, jnp.concatenate(ys)


def _generate_impl(static: _Static, state: nnx.State, prompt_ids: jax.Array, prompt_lengths: jax.Array,
                   page_table: jax.Array, shared_pages: jax.Array, writes: jax.Array, max_new_tokens: jax.Array,
                   seed: jax.Array, row_streams: jax.Array, row_samples: jax.Array, row_real: jax.Array):
    model: Qwen3ForCausalLM = nnx.merge(static.graphdef, state)
    n, mesh = static.num_samples, static.mesh
    batch = prompt_ids.shape[0] * n
    first_logits, cache = prefill(model, prompt_ids, prompt_lengths, writes, static.num_pages, static.attention,
                                  mesh)

    def draw(logits: jax.Array, step: jax.Array) -> jax.Array:
        keys = sample_keys(seed, row_streams, row_samples, step)
        return sample(logits, keys, static.sampling, static.vocab_size)

    eos = jnp.asarray(static.eos_token_ids or (-1,), jnp.int32)
    first = draw(jnp.repeat(first_logits, n, axis=0), jnp.int32(0))
    first_eos = jnp.isin(first, eos)
    tokens = jnp.full((batch, static.buffer), -1, jnp.int32).at[:, 0].set(first)
    done = first_eos | (max_new_tokens <= 1) | ~row_real  # padding rows of a data split never run
    reason = jnp.where(first_eos, EOS, jnp.where(done, LENGTH, RUNNING)).astype(jnp.int32)
    generated = jnp.ones((batch,), jnp.int32)
    base = jnp.repeat(prompt_lengths, n)  # a sample's cache length before decode step 0
    attended = jnp.zeros((static.buffer, model.config.num_hidden_layers), jnp.int32)

    # Step s feeds token s at position prompt + s and samples token s + 1.
    def cond(carry):
        step, _, done, *_ = carry
        return (step < max_new_tokens - 1) & ~jnp.all(done)

    def body(carry):
        step, tokens, done, reason, generated, cache, attended = carry
        active = ~done
        logits, cache, counts = decode_step(model, cache, jnp.maximum(tokens[:, step], 0), base + step,
                                            page_table, active, static.attention, n, shared_pages, mesh)
        nxt = draw(logits, step + 1)
        tokens = tokens.at[:, step + 1].set(jnp.where(active, nxt, -1))
        generated = generated + active
        hit_eos = active & jnp.isin(nxt, eos)
        hit_len = active & ~hit_eos & (generated >= max_new_tokens)
        reason = jnp.where(hit_eos, EOS, jnp.where(hit_len, LENGTH, reason))
        done = done | hit_eos | hit_len
        if static.repetition is not None and static.buffer >= static.repetition.window:
            repeated = active & ~done & _repeated(tokens, generated, static.repetition)
            reason = jnp.where(repeated, REPETITION, reason)
            done = done | repeated
        attended = attended.at[step].set(counts)
        return step + 1, tokens, done, reason, generated, cache, attended

    carry = (jnp.int32(0), tokens, done, reason, generated, cache, attended)
    steps, tokens, done, reason, generated, _, attended = jax.lax.while_loop(cond, body, carry)
    reason = jnp.where(reason == RUNNING, LENGTH, reason)
    everywhere = placement.replicated(mesh)  # every process can read the result
    return jax.lax.with_sharding_constraint((tokens, generated, reason, attended, steps), everywhere)


_generate_jit = jax.jit(_generate_impl, static_argnames=("static",))


class _Request(NamedTuple):
    """generate's arguments once checked: Python ints, prompts as int32 arrays, stream ids as uint32[P]."""

    prompts: list[np.ndarray]
    streams: np.ndarray
    num_samples: int
    max_new_tokens: int
    seed: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    cache_budget_bytes: int | None


def _check_request(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], *, num_samples: object,
                   max_new_tokens: object, seed: object, vocab_size: object, eos_token_ids: Sequence[object],
                   stream_ids: Sequence[object] | None, cache_budget_bytes: object) -> _Request:
    """Every argument of generate that is not a config object, checked (integers by cache.checked_int) with
    nothing computed or allocated: the request sizes (>= 1), seed and stream ids (uint32), vocab_size, the
    eos ids and the prompts' token ids (inside the model's vocabulary), prompt + max_new_tokens (within the
    model's positions)."""
    vocab = model.config.vocab_size
    num_samples = checked_int(num_samples, "num_samples", minimum=1)
    max_new_tokens = checked_int(max_new_tokens, "max_new_tokens", minimum=1, why="a budget of 0 generates nothing")
    seed = checked_int(seed, "seed", minimum=0, maximum=ID_LIMIT - 1, why="a uint32, see generate")
    vocab_size = vocab if vocab_size is None else checked_int(vocab_size, "vocab_size", minimum=1, maximum=vocab)
    eos = tuple(checked_int(e, f"eos_token_ids[{i}]", minimum=0, maximum=vocab - 1, why="the model's vocabulary")
                for i, e in enumerate(eos_token_ids))
    if cache_budget_bytes is not None:
        cache_budget_bytes = checked_int(cache_budget_bytes, "cache_budget_bytes", minimum=1,
                                         why="None: the default budget")
    arrays = _check_prompts(prompts, max_new_tokens, model.config.vocab_size, model.config.max_position_embeddings)
    return _Request(arrays, _stream_ids(stream_ids, len(arrays)), num_samples, max_new_tokens, seed, vocab_size,
                    eos, cache_budget_bytes)


def _check_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, vocab: int, positions: int
                   ) -> list[np.ndarray]:
    """The prompts as int32 arrays: each a non-empty flat list of ids in [0, vocab), with room for
    max_new_tokens within the model's `positions`."""
    if len(prompts) == 0:
        raise ValueError("prompts is empty")
    arrays = []
    for i, prompt in enumerate(prompts):
        ids = np.asarray(prompt)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"prompt {i} is empty or not a flat list of token ids")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"prompt {i} holds non-integer token ids ({ids.dtype})")
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.size:
            raise ValueError(f"prompt {i} has token id {int(bad[0])} outside the model's vocabulary [0, {vocab})")
        if ids.size + max_new_tokens > positions:
            raise ValueError(f"prompt {i} ({ids.size} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                             f"model's max_position_embeddings ({positions})")
        arrays.append(ids.astype(np.int32))
    return arrays


def _stream_ids(stream_ids: Sequence[object] | None, num_prompts: int) -> np.ndarray:
    """uint32[P]: one PRNG stream id per prompt (default 0 .. P - 1), each an integer in [0, 2**32)."""
    if stream_ids is None:
        return np.arange(num_prompts, dtype=np.uint32)
    if isinstance(stream_ids, (str, bytes)) or not hasattr(stream_ids, "__len__") or len(stream_ids) != num_prompts:
        raise ValueError(f"stream_ids must be {num_prompts} integers (one per prompt), got {stream_ids!r}")
    return np.asarray([checked_int(v, f"stream_ids[{i}]", minimum=0, maximum=ID_LIMIT - 1, why="a uint32")
                       for i, v in enumerate(stream_ids)], np.uint32)


def _int32_bits(x: np.ndarray) -> np.ndarray:
    """uint32 values as the int32 values with the same bits: the program takes int32 inputs, and sample_keys
    reads only the bits of a seed or stream id."""
    return np.asarray(x, np.uint32).view(np.int32)


def _shard_inputs(plans: list[CachePlan], split: planning.DataSplit, prompts: list[np.ndarray],
                  streams: np.ndarray) -> dict[str, np.ndarray]:
    """The host arrays of a request cut into data shards, shard-major: shard d owns rows d * R .. (d + 1) * R - 1
    of every array (its prompts, its rows, its slice of the prefill writes); page ids are local to the shard's
    pool.

    prompt_ids int32[S * Pl, T] (right-padded to a length bucket), prompt_lengths and shared_pages int32[S * Pl],
    page_table int32[S * Pl * Nl, W], writes int32[3, S * n] (CachePlan.prefill_writes), row_streams /
    row_samples int32[S * Pl * Nl] (each row's PRNG stream, its uint32 bits as int32, and global sample index),
    row_real bool[S * Pl * Nl] (False: a padding prompt's row)."""
    num_prompts = len(prompts)
    prompts, streams = split.pad(prompts), np.asarray(split.pad(list(streams)), np.uint32)
    prompt_len = _bucket(max(p.size for p in prompts), 16)
    width = _bucket(max(plan.page_table.shape[1] for plan in plans))
    n = _bucket(max(plan.prefill_page.size for plan in plans))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("prompt_ids", "prompt_lengths", "shared_pages",
                                                        "page_table", "writes", "row_streams", "row_samples",
                                                        "row_real")}
    for d, plan in enumerate(plans):
        prompt_rows, sample_rows = split.shard_rows(d)
        ids = np.zeros((len(prompt_rows), prompt_len), np.int32)
        for r, i in enumerate(prompt_rows):
            ids[r, :prompts[i].size] = prompts[i]
        out["prompt_ids"].append(ids)
        out["prompt_lengths"].append(np.asarray([prompts[i].size for i in prompt_rows], np.int32))
        out["shared_pages"].append(plan.shared_pages_per_prompt)
        table = np.full((plan.page_table.shape[0], width), NULL_PAGE, np.int32)
        table[:, :plan.page_table.shape[1]] = plan.page_table
        out["page_table"].append(table)
        out["writes"].append(plan.prefill_writes(prompt_len, n))
        out["row_streams"].append(_int32_bits(np.repeat(streams[list(prompt_rows)], len(sample_rows))))
        out["row_samples"].append(np.tile(np.asarray(sample_rows, np.int32), len(prompt_rows)))
        out["row_real"].append(np.repeat(np.asarray(prompt_rows) < num_prompts, len(sample_rows)))
    return {k: np.concatenate(v, axis=1 if k == "writes" else 0) for k, v in out.items()}


def _result_rows(split: planning.DataSplit, num_prompts: int) -> np.ndarray:
    """int[P, N]: the row of the shard-major batch that holds sample s of prompt p."""
    per_shard = split.prompts_per_shard * split.samples_per_shard
    order = np.zeros((num_prompts, split.sample_groups * split.samples_per_shard), np.int64)
    for d in range(split.shards):
        prompt_rows, sample_rows = split.shard_rows(d)
        for pl, p in enumerate(prompt_rows):
            if p < num_prompts:
                order[p, list(sample_rows)] = d * per_shard + pl * split.samples_per_shard + np.arange(len(sample_rows))
    return order


INPUT_AXES: dict[str, tuple[str | None, ...] | None] = {
    "prompt_ids": (BATCH, None), "prompt_lengths": (BATCH,),
    "page_table": (BATCH, None), "shared_pages": (BATCH,),
    "writes": (None, BATCH), "row_streams": (BATCH,), "row_samples": (BATCH,),
    "row_real": (BATCH,)}
"""The logical axes of the compiled program's host inputs (rows and prompts split over "data")."""


@dataclasses.dataclass(frozen=True)
class Program:
    """A request planned for the compiled program: its static part, its host inputs (by name, see INPUT_AXES),
    and how its rows are split over the data shards."""

    static: _Static
    inputs: dict[str, np.ndarray]
    split: planning.DataSplit


def _size_text(n: int) -> str:
    """Bytes for a message: "572.20 GiB", "3.50 MiB", "900 bytes"."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


def check_cache_fits(model: Qwen3ForCausalLM, prompt_lengths: Sequence[int], num_samples: int,
                     max_new_tokens: int, attention: AttentionConfig, mesh: Mesh | AbstractMesh,
                     cache_budget_bytes: int) -> None:
    """Refuses, from arithmetic alone (O(prompts) work, so an absurd num_samples is refused at once), a request
    whose KV cache exceeds `cache_budget_bytes` per device, or whose cache pages or decode rows per data shard
    do not fit the int32 page ids and row indices. Only the KV cache is counted (parameters, logits and the
    token buffer come on top)."""
    data = mesh.shape[DATA]
    pages = planning.cache_pages_per_shard(prompt_lengths, num_samples, max_new_tokens, attention, data)
    need = planning.kv_cache_bytes_per_device(pages, model.config, model.dtype, attention, mesh)
    what = (f"{num_samples} samples x {len(prompt_lengths)} prompts (up to {max(prompt_lengths)} prompt + "
            f"{max_new_tokens} new tokens, mesh {dict(mesh.shape)}) need {pages} KV cache pages of "
            f"{attention.cache_page_size} tokens per data shard")
    if need > cache_budget_bytes:
        raise ValueError(f"{what}: {_size_text(need)} of KV cache per device; the cache budget is "
                         f"{_size_text(cache_budget_bytes)} per device (cache_budget_bytes; default: free device "
                         f"memory, or half the host RAM)")
    split = planning.DataSplit.of(len(prompt_lengths), num_samples, data)
    rows = split.prompts_per_shard * split.samples_per_shard
    if pages >= INT32_LIMIT or rows >= INT32_LIMIT:
        raise ValueError(f"{what} and {rows} decode rows; page ids and rows are int32, so each must be below "
                         f"2**31 = {INT32_LIMIT}")


def prepare(model: Qwen3ForCausalLM, prompts: list[np.ndarray], streams: np.ndarray, *, num_samples: int,
            max_new_tokens: int, sampling: SamplingConfig, attention: AttentionConfig,
            eos_token_ids: Sequence[int], vocab_size: int, repetition: RepetitionStop | None,
            cache_budget_bytes: int, mesh: Mesh) -> Program:
    """Plans a validated request (prompts int32 arrays, one PRNG stream each: uint32 ids) on `mesh`: the KV
    cache sized from arithmetic and refused (check_cache_fits) before anything per sample is built, then the
    cache plans per data shard and the host inputs of `_generate_jit`. The model may be abstract (compile-only
    planning)."""
    lengths = [a.size for a in prompts]
    _check_placement(model, lengths, num_samples, max_new_tokens, attention, mesh, cache_budget_bytes)
    split, plans = planning.request_plans(lengths, num_samples, max_new_tokens, attention, mesh.shape[DATA])
    static = _Static(nnx.graphdef(model), mesh, sampling, attention, split.samples_per_shard,
                     _bucket(max_new_tokens), split.shards * max(plan.num_pages for plan in plans),
                     tuple(int(e) for e in eos_token_ids), vocab_size, repetition)
    return Program(static, _shard_inputs(plans, split, prompts, streams), split)


def _check_placement(model: Qwen3ForCausalLM, lengths: Sequence[int], num_samples: int, max_new_tokens: int,
                     attention: AttentionConfig, mesh: Mesh | AbstractMesh, cache_budget_bytes: int) -> None:
    """The checks of a request against the model and mesh: the policy's layers, the mesh, the cache budget."""
    attention.check_layers(model.config.num_hidden_layers)
    meshes.check_mesh(model.config, mesh)
    check_cache_fits(model, lengths, num_samples, max_new_tokens, attention, mesh, cache_budget_bytes)


def _checked(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], mesh: Mesh | None, **arguments: object
             ) -> tuple[_Request, Mesh, int]:
    """generate's arguments checked (_check_request), its mesh and its cache budget in bytes per device."""
    r = _check_request(model, prompts, **arguments)
    mesh = meshes.local_mesh() if mesh is None else mesh
    return r, mesh, _memory_budget() if r.cache_budget_bytes is None else r.cache_budget_bytes


def check(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, num_samples: int = 1,
          attention: AttentionConfig = AttentionConfig(), seed: int = 0, eos_token_ids: Sequence[int] = (),
          vocab_size: int | None = None, cache_budget_bytes: int | None = None,
          stream_ids: Sequence[int] | None = None, mesh: Mesh | None = None) -> None:
    """Raises the ValueError that `generate` with these arguments would raise before any compute, computing
    nothing: a script checks every batch of a job with it before the first one runs. The model may be abstract."""
    r, mesh, budget = _checked(model, prompts, mesh, num_samples=num_samples, max_new_tokens=max_new_tokens,
                               seed=seed, vocab_size=vocab_size, eos_token_ids=eos_token_ids,
                               stream_ids=stream_ids, cache_budget_bytes=cache_budget_bytes)
    _check_placement(model, [a.size for a in r.prompts], r.num_samples, r.max_new_tokens, attention, mesh, budget)


def generate(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             num_samples: int = 1, sampling: SamplingConfig = SamplingConfig(),
             attention: AttentionConfig = AttentionConfig(), seed: int = 0, eos_token_ids: Sequence[int] = (),
             vocab_size: int | None = None, repetition: RepetitionStop | None = None,
             cache_budget_bytes: int | None = None, stream_ids: Sequence[int] | None = None,
             mesh: Mesh | None = None) -> GenerationResult:
    """Samples `num_samples` continuations of every prompt (lists of token ids), up to `max_new_tokens` each.

    A sample stops at the first id in `eos_token_ids`, after `max_new_tokens`, or (with `repetition`) when it
    loops. `attention` is the decode-attention policy (prefill is always dense); its cache_page_size is the cache's
    page size. `vocab_size` is the tokenizer's real vocabulary (ids >= it are never sampled; default: the model's).
    Sample s of prompt p draws from keys derived from (seed, stream_ids[p], s, step) (stream_ids default: 0 ..
    P - 1), so it does not change when N changes; give each prompt a fixed stream id (e.g. its index in a
    dataset) and its samples do not depend on which batch it is decoded in either. The cache is sized from the
    request; a request over `cache_budget_bytes` per device (default: free device memory, or half the host RAM)
    is refused before any compute, from arithmetic (no per-sample work: an absurd num_samples is refused at once).

    Integer arguments (num_samples, max_new_tokens, seed, stream_ids, vocab_size, eos_token_ids,
    cache_budget_bytes) may be Python or numpy integers; bools and floats (even 4.0) are refused. `seed` and
    each stream id are uint32: any integer in [0, 2**32); the key is jax.random.key(seed), so a seed below 2**31
    gives the samples it always gave. Negative seeds and ids are refused rather than wrapped (seed -1 would
    alias 2**32 - 1). Every argument is checked, with a ValueError naming it, before anything is compiled or
    allocated.

    `mesh` (meshes.make_mesh; default: this process's first device) spreads the request: parameters and KV
    heads over "model", prompts and samples over "data" (see planning.DataSplit). The parameters are placed on
    the mesh for the call (no copy when the model was loaded or sharded onto it). Every process of a multi-host
    run calls generate with the same arguments and gets the whole result.
    """
    r, mesh, budget = _checked(model, prompts, mesh, num_samples=num_samples, max_new_tokens=max_new_tokens,
                               seed=seed, vocab_size=vocab_size, eos_token_ids=eos_token_ids,
                               stream_ids=stream_ids, cache_budget_bytes=cache_budget_bytes)
    arrays, max_new_tokens = r.prompts, r.max_new_tokens
    program = prepare(model, arrays, r.streams, num_samples=r.num_samples, max_new_tokens=max_new_tokens,
                      sampling=sampling, attention=attention, eos_token_ids=r.eos_token_ids,
                      vocab_size=r.vocab_size, repetition=repetition, cache_budget_bytes=budget, mesh=mesh)
    arg = {name: placement.put(value, INPUT_AXES[name], mesh) for name, value in program.inputs.items()}
    scalar = lambda x: placement.put(np.asarray(x, np.int32), None, mesh)
    tokens, generated, reason, attended, steps = _generate_jit(
        program.static, placement.place_params(model, mesh), **arg, max_new_tokens=scalar(max_new_tokens),
        seed=scalar(_int32_bits(r.seed)))
    order = _result_rows(program.split, len(arrays))  # [P, N] -> row of the sharded batch
    tokens, generated, reason = (np.asarray(x)[order] for x in (tokens, generated, reason))
    return GenerationResult(
        tokens=tokens[..., :max_new_tokens], lengths=generated,
        finish_reasons=np.asarray(FINISH_REASONS)[reason],
        attended_tokens=np.asarray(attended)[:int(steps)].astype(np.int64),
        prompt_lengths=np.asarray([a.size for a in arrays], np.int32), attention=attention)
