"""The continuous-batching engine: `max_num_seqs` decode slots over a page pool sized from the cache budget,
refilled as samples finish, KV pages allocated `chunk_steps` tokens ahead.

    result = kj.generate(model, prompts, num_samples=8, max_new_tokens=4096, max_num_seqs=64)

The host loop (one iteration per chunk, no Python per token): the scheduler grows the running sequences' pages
(preempting the most recently admitted when the pool is short) and admits waiting (prompt, sample) sequences
into free slots; each newly needed prompt is prefilled alone at its own length bucket (its first tokens drawn
there); then one compiled call decodes up to `chunk_steps` tokens in every slot, and the finished sequences give
their slots and pages back. The pool holds what the running sequences really use, not prompt + max_new_tokens
for every sample, so a request whose up-front reservation exceeds the budget completes when its real lengths fit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from kinetics_jax.cache import PagedLayout
from kinetics_jax.checks import ceil_div
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.sampling import chunk as programs
from kinetics_jax.sampling.request import Request, bucket, int32_bits
from kinetics_jax.sampling.result import GenerationResult
from kinetics_jax.sampling.samplers import SamplingConfig
from kinetics_jax.sampling.scheduler import Scheduler
from kinetics_jax.sampling.stops import FINISH_REASONS, RepetitionStop
from kinetics_jax.sharding import meshes, placement, planning
from kinetics_jax.sharding.axes import DATA

POOL_QUANTUM = 64  # the pool's page count is a multiple of this (a shape bucket)


def pool_pages(model: Qwen3ForCausalLM, r: Request, attention: AttentionConfig, mesh: Mesh, budget: int,
               chunk_steps: int) -> int:
    """The pool size (pages, the null page included): the request's full up-front reservation rounded up to a
    multiple of POOL_QUANTUM (never more is used), or what the budget holds if that is less. Refuses, before any compute, a
    budget that cannot hold the longest prompt and its first chunk of new tokens."""
    layout = PagedLayout.of(attention)
    lengths = [a.size for a in r.prompts]
    reservation = layout.pool_pages(lengths, r.num_samples, r.max_new_tokens)
    bytes_of = lambda n: planning.kv_cache_bytes_per_device(n, model.config, model.dtype, attention, mesh)
    fit = budget * POOL_QUANTUM // bytes_of(POOL_QUANTUM)  # pages are linear in bytes: the most the budget holds
    while fit > 0 and bytes_of(fit) > budget:
        fit -= 1
    pages = min(ceil_div(reservation, POOL_QUANTUM) * POOL_QUANTUM, fit)
    longest = max(lengths)
    need = 1 + ceil_div(longest + min(chunk_steps, r.max_new_tokens) + layout.page_offset, layout.page_size)
    if pages < need:
        raise ValueError(f"the cache budget ({budget} bytes per device) holds {fit} KV cache pages of "
                         f"{layout.page_size} tokens; the longest prompt ({longest} tokens) and its first "
                         f"{min(chunk_steps, r.max_new_tokens)} new tokens need {need} (cache_budget_bytes)")
    return pages


def check(model: Qwen3ForCausalLM, r: Request, attention: AttentionConfig, mesh: Mesh, budget: int,
          chunk_steps: int) -> None:
    """The checks of a checked request (`request.checked`) against the model and mesh for this engine: the
    policy's layers, the mesh ("data" axis 1), and a pool that holds the longest prompt's first chunk."""
    attention.check_layers(model.config.num_hidden_layers)
    meshes.check_mesh(model.config, mesh)
    _check_data_axis(mesh)
    pool_pages(model, r, attention, mesh, budget, chunk_steps)


def _check_data_axis(mesh: Mesh) -> None:
    if mesh.shape[DATA] != 1:
        raise ValueError(f"max_num_seqs: the continuous engine runs on meshes with a 'data' axis of 1 (got mesh "
                         f"{dict(mesh.shape)}); use the static batch (max_num_seqs=None) to split over 'data'")


def generate_continuous(model: Qwen3ForCausalLM, r: Request, mesh: Mesh, budget: int, *, sampling: SamplingConfig,
                        attention: AttentionConfig, repetition: RepetitionStop | None, max_num_seqs: int,
                        chunk_steps: int, on_finish: Callable[[int], None] | None = None) -> GenerationResult:
    """Runs a checked request (`request.checked`) through the continuous engine; see generate. on_finish(n) is
    called after each chunk with the number of sequences that finished in it (a progress bar)."""
    _check_data_axis(mesh)
    lengths = [a.size for a in r.prompts]
    num_pages = pool_pages(model, r, attention, mesh, budget, chunk_steps)
    static = programs.EngineStatic(
        graphdef=nnx.graphdef(model), mesh=mesh, sampling=sampling, attention=attention,
        num_samples=r.num_samples, max_num_seqs=max_num_seqs, chunk=chunk_steps, buffer=bucket(r.max_new_tokens),
        pool_pages=num_pages, eos_token_ids=r.eos_token_ids, vocab_size=r.vocab_size, repetition=repetition)
    layout = static.layout(model.config)
    width = bucket(ceil_div(max(lengths) + r.max_new_tokens - 1 + layout.page_offset, layout.page_size))
    scheduler = Scheduler(layout, lengths, r.num_samples, r.max_new_tokens, num_pages=num_pages,
                          max_num_seqs=max_num_seqs, chunk=chunk_steps, streams=r.streams, width=width,
                          eos_token_ids=r.eos_token_ids)
    params = placement.place_params(model, mesh)
    engine = programs.empty_state(static, model)
    put = lambda x: placement.put(np.asarray(x, np.int32), None, mesh)
    seed, max_new = put(int32_bits(r.seed)), put(r.max_new_tokens)
    streams = int32_bits(r.streams)
    done = 0
    while not scheduler.finished:
        for job in scheduler.schedule():
            ids = np.zeros((1, bucket(lengths[job.prompt], 16)), np.int32)
            ids[0, :lengths[job.prompt]] = r.prompts[job.prompt]
            writes = np.zeros((3, bucket(job.writes.shape[1])), np.int32)
            writes[:, :job.writes.shape[1]] = job.writes
            engine, first = programs.prefill_prompt(static, params, engine, put(ids),
                                                    put([lengths[job.prompt]]), put(writes),
                                                    put(streams[job.prompt]), seed)
            scheduler.fill_first_tokens(job.prompt, np.asarray(first))
        plan = scheduler.chunk_plan()
        if plan.active.any():
            engine, out = programs.decode_chunk(static, params, engine, plan.placed(mesh), max_new, seed,
                                                put(scheduler.refill_after()))
            scheduler.record(*(np.asarray(x) for x in out))
        if on_finish is not None:
            on_finish(len(scheduler.results) - done)
            done = len(scheduler.results)
    return _result(scheduler, np.asarray(engine.attended), r, attention)


def _result(scheduler: Scheduler, attended: np.ndarray, r: Request, attention: AttentionConfig
            ) -> GenerationResult:
    p, n, t = len(r.prompts), r.num_samples, r.max_new_tokens
    tokens = np.full((p, n, t), -1, np.int32)
    lengths = np.zeros((p, n), np.int32)
    reasons = np.zeros((p, n), np.int32)
    for (i, s), (seq, reason) in scheduler.results.items():
        tokens[i, s, :len(seq)] = seq
        lengths[i, s], reasons[i, s] = len(seq), reason
    return GenerationResult(tokens=tokens, lengths=lengths, finish_reasons=np.asarray(FINISH_REASONS)[reasons],
                            attended_tokens=attended[:int(lengths.max()) - 1].astype(np.int64),
                            prompt_lengths=np.asarray([a.size for a in r.prompts], np.int32), attention=attention,
                            stats=scheduler.stats)
