"""The continuous-batching engine: `max_num_seqs` decode slots over a page pool sized from the cache budget,
refilled as samples finish, KV pages allocated `chunk_steps` tokens ahead.

    result = kj.generate(model, prompts, num_samples=8, max_new_tokens=4096, max_num_seqs=64)

The host loop (one iteration per chunk, no Python per token): the scheduler grows the running sequences' pages
(preempting the most recently admitted when the pool is short) and admits waiting (prompt, sample) sequences
into free slots; each newly needed prompt is prefilled alone in its data shard at its own length bucket (one
prompt per shard per call), and the admitted samples' first tokens are drawn from its last logits; then one
compiled call decodes up to `chunk_steps` tokens in every slot, the finished sequences give their slots and
pages back, and `on_finish` gets them (a script writes their records as they come: no per-batch barrier). On a
mesh whose "data" axis is D, each shard has its own pool and max_num_seqs / D of the slots
(kinetics_jax.sampling.scheduler). The pool holds what the running sequences really use, not prompt +
max_new_tokens for every sample, so a request whose up-front reservation exceeds the budget completes when its
real lengths fit.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from kinetics_jax.attention import min_shared_pages
from kinetics_jax.cache import PagedLayout
from kinetics_jax.checks import ceil_div
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.sampling import chunk as programs
from kinetics_jax.sampling.request import Request, bucket, int32_bits
from kinetics_jax.sampling.result import SKIPPED, FinishedSample, GenerationResult
from kinetics_jax.sampling.samplers import SamplingConfig
from kinetics_jax.sampling.scheduler import Prefill, Scheduler
from kinetics_jax.sampling.stops import FINISH_REASONS, RepetitionStop
from kinetics_jax.sharding import meshes, placement, planning
from kinetics_jax.sharding.axes import DATA

POOL_QUANTUM = 64  # the pool's page count is a multiple of this (a shape bucket)
# Host bytes per (prompt, sample) beside its 8 bytes per token of budget (the result's int32 row and the
# finished sample's int32 array): its queue, result and FinishedSample entries (Python objects), rounded up.
SEQUENCE_HOST_BYTES = 512


def _check_host_memory(r: Request) -> None:
    """Refuses, from arithmetic, a request whose per-sequence host state (the result is int32[P, N, T]) exceeds
    half the host RAM: an absurd num_samples fails at once, before any compute."""
    sequences = len(r.prompts) * r.num_samples
    need = sequences * (8 * r.max_new_tokens + SEQUENCE_HOST_BYTES)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have // 2:
        raise ValueError(f"{r.num_samples} samples x {len(r.prompts)} prompts of up to {r.max_new_tokens} new tokens "
                         f"need about {need / 2**30:.1f} GiB of host memory for their tokens and bookkeeping (the "
                         f"result is int32[prompts, samples, max_new_tokens]); half the host RAM is "
                         f"{have / 2**31:.1f} GiB: lower num_samples or max_new_tokens, or split the request")


def pool_pages(model: Qwen3ForCausalLM, r: Request, attention: AttentionConfig, mesh: Mesh, budget: int,
               max_num_seqs: int, chunk_steps: int) -> int:
    """The pages of each data shard's pool (its null page included): the most the shard can use (the request's
    full up-front reservation, or its max_num_seqs / D slots of the longest sequence beside as many prompts
    plus one, whichever is less), rounded up to a multiple of POOL_QUANTUM, or what the budget per device
    holds if that is less. Refuses, before any compute, a budget that cannot hold the longest prompt and its
    first chunk of new tokens."""
    layout = PagedLayout.of(attention)
    lengths = [a.size for a in r.prompts]
    longest, slots = max(lengths), max_num_seqs // mesh.shape[DATA]
    reservation = layout.pool_pages(lengths, r.num_samples, r.max_new_tokens)
    sequence = ceil_div(longest + r.max_new_tokens - 1 + layout.page_offset, layout.page_size) + 1
    prompt = ceil_div(longest + layout.page_offset, layout.page_size)
    most = min(reservation, 1 + slots * sequence + (slots + 1) * prompt)
    bytes_of = lambda n: planning.kv_cache_bytes_per_device(n, model.config, model.dtype, attention, mesh)
    fit = budget * POOL_QUANTUM // bytes_of(POOL_QUANTUM)  # pages are linear in bytes: the most the budget holds
    while fit > 0 and bytes_of(fit) > budget:
        fit -= 1
    pages = min(ceil_div(most, POOL_QUANTUM) * POOL_QUANTUM, fit)
    need = 1 + ceil_div(longest + min(chunk_steps, r.max_new_tokens) + layout.page_offset, layout.page_size)
    if pages < need:
        raise ValueError(f"the cache budget ({budget} bytes per device) holds {fit} KV cache pages of "
                         f"{layout.page_size} tokens; the longest prompt ({longest} tokens) and its first "
                         f"{min(chunk_steps, r.max_new_tokens)} new tokens need {need} (cache_budget_bytes)")
    return pages


def checked_skip(skip: object, num_prompts: int, num_samples: int) -> frozenset[tuple[int, int]]:
    """`skip` as a set of (prompt, sample) pairs, each in range; a ValueError names the first bad entry."""
    try:
        pairs = list(skip)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"skip must be a collection of (prompt, sample) pairs, got {skip!r:.60}") from None
    out = set()
    for pair in pairs:
        if (not isinstance(pair, tuple) or len(pair) != 2
                or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in pair)
                or not (0 <= pair[0] < num_prompts and 0 <= pair[1] < num_samples)):
            raise ValueError(f"skip: {pair!r:.60} is not a (prompt, sample) pair with 0 <= prompt < {num_prompts} "
                             f"and 0 <= sample < {num_samples}")
        out.add((int(pair[0]), int(pair[1])))
    return frozenset(out)


def check(model: Qwen3ForCausalLM, r: Request, attention: AttentionConfig, mesh: Mesh, budget: int,
          max_num_seqs: int, chunk_steps: int) -> int:
    """The checks of a checked request (`request.checked`) against the model and mesh for this engine: the
    policy's layers, the mesh, the host memory the request's tokens need, slots that the "data" axis divides,
    and pools that hold the longest prompt's first chunk. Returns the pages of each shard's pool (pool_pages)."""
    attention.check_layers(model.config.num_hidden_layers)
    meshes.check_mesh(model.config, mesh)
    _check_host_memory(r)
    shards = mesh.shape[DATA]
    if max_num_seqs % shards:
        raise ValueError(f"max_num_seqs ({max_num_seqs}) must be a multiple of the mesh's 'data' axis ({shards}): "
                         f"each data shard runs max_num_seqs / {shards} slots")
    return pool_pages(model, r, attention, mesh, budget, max_num_seqs, chunk_steps)


def _prefill_calls(jobs: list[Prefill], shards: int, lengths: list[int]) -> Iterator[list[Prefill | None]]:
    """The prefill calls for a round's jobs: each call prefills at most one prompt per data shard, all of one
    length bucket (so that each prompt is prefilled at its own bucket); [shard] -> its job or None."""
    queues = [[job for job in jobs if job.shard == d] for d in range(shards)]
    size = lambda job: bucket(lengths[job.prompt], 16)
    while any(queues):
        length = size(next(q[0] for q in queues if q))
        call: list[Prefill | None] = []
        for q in queues:
            job = next((job for job in q if size(job) == length), None)
            if job is not None:
                q.remove(job)
            call.append(job)
        yield call


def _prefill_rows(call: list[Prefill | None], r: Request, lengths: list[int]) -> programs.PrefillRows:
    """One prefill call's inputs (chunk.PrefillRows): a shard without a job gets a one-token dummy whose writes
    all go to its null page."""
    real = [job for job in call if job is not None]
    width = bucket(max(lengths[job.prompt] for job in real), 16)
    n = bucket(max(job.writes.shape[1] for job in real))
    d = len(call)
    ids, sizes = np.zeros((d, width), np.int32), np.ones(d, np.int32)
    writes, streams = np.zeros((3, d * n), np.int32), np.zeros(d, np.int32)
    for i, job in enumerate(call):
        if job is None:
            continue
        ids[i, :lengths[job.prompt]] = r.prompts[job.prompt]
        sizes[i] = lengths[job.prompt]
        writes[:, i * n:i * n + job.writes.shape[1]] = job.writes
        streams[i] = int32_bits(r.streams[job.prompt])
    return programs.PrefillRows(ids, sizes, writes, streams)


def generate_continuous(model: Qwen3ForCausalLM, r: Request, mesh: Mesh, per_shard: int, *,
                        sampling: SamplingConfig, attention: AttentionConfig, repetition: RepetitionStop | None,
                        max_num_seqs: int, chunk_steps: int, skip: frozenset[tuple[int, int]] = frozenset(),
                        on_finish: Callable[[list[FinishedSample]], None] | None = None) -> GenerationResult:
    """Runs a request checked by `check` (which gave `per_shard`, the pages of each shard's pool) through the
    continuous engine; see generate. on_finish gets, after each chunk, the sequences that finished in it (in the
    order they finished); `skip`'s pairs are not run."""
    shards = mesh.shape[DATA]
    lengths = [a.size for a in r.prompts]
    static = programs.EngineStatic(
        graphdef=nnx.graphdef(model), mesh=mesh, sampling=sampling, attention=attention,
        max_num_seqs=max_num_seqs, chunk=chunk_steps, buffer=bucket(r.max_new_tokens),
        pool_pages=shards * per_shard, eos_token_ids=r.eos_token_ids, vocab_size=r.vocab_size,
        repetition=repetition, share_width=min(r.num_samples, max_num_seqs // shards))
    layout = static.layout(model.config)
    width = bucket(ceil_div(max(lengths) + r.max_new_tokens - 1 + layout.page_offset, layout.page_size))
    scheduler = Scheduler(layout, lengths, r.num_samples, r.max_new_tokens, num_pages=per_shard,
                          max_num_seqs=max_num_seqs, chunk=chunk_steps, streams=r.streams, width=width,
                          eos_token_ids=r.eos_token_ids, shards=shards, skip=skip, share_width=static.share_width,
                          share_from=min_shared_pages(attention, meshes.platform(mesh), model.dtype, layout.page_size))
    params = placement.place_params(model, mesh)
    engine = programs.empty_state(static, model)
    put = lambda x: placement.put(np.asarray(x, np.int32), None, mesh)
    seed, max_new = put(int32_bits(r.seed)), put(r.max_new_tokens)
    while not scheduler.finished:
        for call in _prefill_calls(scheduler.schedule(), shards, lengths):
            engine, logits = programs.prefill_prompt(static, params, engine,
                                                     _prefill_rows(call, r, lengths).placed(mesh))
            for d, job in enumerate(call):
                if job is not None:
                    scheduler.set_logits(job, logits[d])
        for draw in scheduler.first_token_draws():
            samples = np.zeros(bucket(len(draw.samples)), np.int32)
            samples[:len(draw.samples)] = draw.samples
            first = programs.draw_first(static, draw.logits, put(int32_bits(r.streams[draw.prompt])), put(samples),
                                        seed)
            scheduler.fill_first_tokens(draw, np.asarray(first))
        plan = scheduler.chunk_plan()
        if plan.active.any():
            engine, out = programs.decode_chunk(static, params, engine, plan.placed(mesh), max_new, seed,
                                                put(scheduler.refill_after()))
            scheduler.record(*(np.asarray(x) for x in out))
        finished = scheduler.take_finished()
        if on_finish is not None and finished:
            on_finish([_finished(scheduler, p, s) for p, s in finished])
    return _result(scheduler, np.asarray(engine.attended), r, attention, skip)


def _finished(scheduler: Scheduler, p: int, s: int) -> FinishedSample:
    tokens, reason = scheduler.results[(p, s)]
    return FinishedSample(p, s, tokens.tolist(), FINISH_REASONS[reason])


def _result(scheduler: Scheduler, attended: np.ndarray, r: Request, attention: AttentionConfig,
            skip: frozenset[tuple[int, int]]) -> GenerationResult:
    p, n, t = len(r.prompts), r.num_samples, r.max_new_tokens
    tokens = np.full((p, n, t), -1, np.int32)
    lengths = np.zeros((p, n), np.int32)
    reasons = np.zeros((p, n), np.int32)
    for (i, s), (seq, reason) in scheduler.results.items():
        tokens[i, s, :len(seq)] = seq
        lengths[i, s], reasons[i, s] = len(seq), reason
    finish_reasons = np.asarray(FINISH_REASONS)[reasons]
    for i, s in skip:
        finish_reasons[i, s] = SKIPPED
    return GenerationResult(tokens=tokens, lengths=lengths, finish_reasons=finish_reasons,
                            attended_tokens=attended[:max(int(lengths.max()) - 1, 0)].astype(np.int64),
                            prompt_lengths=np.asarray([a.size for a in r.prompts], np.int32), attention=attention,
                            stats=scheduler.stats)
