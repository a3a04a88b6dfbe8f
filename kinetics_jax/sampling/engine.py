"""Generation: dense prefill once per prompt, then one jit-compiled decode loop over all prompts x samples.

    result = kj.generate(model, [prompt_ids, ...], num_samples=8, max_new_tokens=4096)

The data path of a request (docs/architecture.md): `request` checks the arguments, sizes the KV cache from
arithmetic (refusing what does not fit) and plans it per data shard into one struct of host inputs
(`DecodeInputs`); one compiled program then runs `prefill` (the prompts, right-padded to a length bucket, through
the model once, each layer's K/V written into the paged cache in place) and `decode.decode_loop` (the N samples
of every prompt as one batch in a `lax.while_loop`, no Python per token); the rows come back in (prompt, sample)
order as a `GenerationResult`.
"""

from __future__ import annotations

from typing import Callable, Collection, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.checks import checked_int
from kinetics_jax.sampling import continuous, request
from kinetics_jax.sampling.decode import decode_loop
from kinetics_jax.sampling.prefill import prefill
from kinetics_jax.sampling.request import DecodeInputs, DecodeStatic
from kinetics_jax.sampling.result import FinishedSample, GenerationResult
from kinetics_jax.sampling.samplers import SamplingConfig
from kinetics_jax.sampling.stops import FINISH_REASONS, RepetitionStop
from kinetics_jax.sharding import placement


def _generate_impl(static: DecodeStatic, state: nnx.State, inputs: DecodeInputs, max_new_tokens: jax.Array,
                   seed: jax.Array) -> tuple[jax.Array, ...]:
    """The compiled program: prefill, the decode loop, and the result replicated (every process reads it).
    Returns (tokens int32[B, buffer], generated int32[B], reason int32[B], attended int32[buffer, L], steps)."""
    model: Qwen3ForCausalLM = nnx.merge(static.graphdef, state)
    first_logits, cache = prefill(model, inputs.prompt_ids, inputs.prompt_lengths, inputs.writes, static.pool_pages,
                                  static.attention, static.mesh)
    final = decode_loop(model, static, inputs, first_logits, cache, max_new_tokens, seed)
    out = (final.tokens, final.generated, final.reason, final.attended, final.step)
    return jax.lax.with_sharding_constraint(out, placement.replicated(static.mesh))


_generate_jit = jax.jit(_generate_impl, static_argnames=("static",))


def check(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, num_samples: int = 1,
          attention: AttentionConfig = AttentionConfig(), seed: int = 0, eos_token_ids: Sequence[int] = (),
          vocab_size: int | None = None, cache_budget_bytes: int | None = None,
          stream_ids: Sequence[int] | None = None, mesh: Mesh | None = None, max_num_seqs: int | None = None,
          chunk_steps: int = 16, skip: Collection[tuple[int, int]] = ()) -> None:
    """Raises the ValueError that `generate` with these arguments would raise before any compute, computing
    nothing: a script checks every batch of a job with it before the first one runs. The model may be abstract."""
    r, mesh, budget = request.checked(model, prompts, mesh, num_samples=num_samples, max_new_tokens=max_new_tokens,
                               seed=seed, vocab_size=vocab_size, eos_token_ids=eos_token_ids,
                               stream_ids=stream_ids, cache_budget_bytes=cache_budget_bytes)
    if max_num_seqs is None:
        _static_only(skip)
        request.check_placement(model, [a.size for a in r.prompts], r.num_samples, r.max_new_tokens, attention,
                                mesh, budget)
        return
    _continuous_arguments(model, r, attention, mesh, budget, max_num_seqs, chunk_steps, skip)


def _static_only(skip: Collection[tuple[int, int]]) -> None:
    if skip:
        raise ValueError("skip needs the continuous engine (max_num_seqs): the static batch decodes every sample")


def _continuous_arguments(model: Qwen3ForCausalLM, r: request.Request, attention: AttentionConfig, mesh: Mesh,
                          budget: int, max_num_seqs: object, chunk_steps: object,
                          skip: Collection[tuple[int, int]]
                          ) -> tuple[int, int, frozenset[tuple[int, int]], int]:
    """The continuous engine's arguments checked (and the request against it): (max_num_seqs, chunk_steps,
    skip as a set of pairs, the pages of each data shard's pool)."""
    max_num_seqs = checked_int(max_num_seqs, "max_num_seqs", minimum=1, why="None: one static batch")
    chunk_steps = checked_int(chunk_steps, "chunk_steps", minimum=1)
    pairs = continuous.checked_skip(skip, len(r.prompts), r.num_samples)
    pages = continuous.check(model, r, attention, mesh, budget, max_num_seqs, chunk_steps)
    return max_num_seqs, chunk_steps, pairs, pages


def generate(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             num_samples: int = 1, sampling: SamplingConfig = SamplingConfig(),
             attention: AttentionConfig = AttentionConfig(), seed: int = 0, eos_token_ids: Sequence[int] = (),
             vocab_size: int | None = None, repetition: RepetitionStop | None = None,
             cache_budget_bytes: int | None = None, stream_ids: Sequence[int] | None = None,
             mesh: Mesh | None = None, max_num_seqs: int | None = None, chunk_steps: int = 16,
             skip: Collection[tuple[int, int]] = (),
             on_finish: Callable[[list[FinishedSample]], None] | None = None) -> GenerationResult:
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

    `max_num_seqs` (None: one static batch of every prompt x sample, decoded until its longest sample ends, its
    cache reserving prompt + max_new_tokens for every sample) runs the continuous engine instead
    (kinetics_jax.sampling.continuous): that many decode slots, refilled as samples finish, over a page pool
    sized from the cache budget and filled on demand, `chunk_steps` decode steps per compiled call. Its samples
    do not depend on their slot, their neighbours, arrival order or preemption. On a mesh whose "data" axis is
    D (a divisor of max_num_seqs), each data shard has max_num_seqs / D slots and its own pool. `skip`: (prompt,
    sample) pairs it does not decode (a resumed job's finished samples; their result rows are empty, finish
    reason "skipped").

    on_finish(samples) gets finished samples (`FinishedSample`: prompt, sample, tokens, finish reason) as they
    come: after each chunk of the continuous engine, the ones that finished in it; once at the end for the
    static batch. Every process of a multi-host run gets the same calls.
    """
    r, mesh, budget = request.checked(model, prompts, mesh, num_samples=num_samples, max_new_tokens=max_new_tokens,
                               seed=seed, vocab_size=vocab_size, eos_token_ids=eos_token_ids,
                               stream_ids=stream_ids, cache_budget_bytes=cache_budget_bytes)
    if max_num_seqs is not None:
        max_num_seqs, chunk_steps, pairs, pages = _continuous_arguments(model, r, attention, mesh, budget,
                                                                        max_num_seqs, chunk_steps, skip)
        return continuous.generate_continuous(model, r, mesh, pages, sampling=sampling, attention=attention,
                                              repetition=repetition, max_num_seqs=max_num_seqs,
                                              chunk_steps=chunk_steps, skip=pairs, on_finish=on_finish)
    _static_only(skip)
    arrays, max_new_tokens = r.prompts, r.max_new_tokens
    program = request.plan_program(model, arrays, r.streams, num_samples=r.num_samples,
                                   max_new_tokens=max_new_tokens, sampling=sampling, attention=attention,
                                   eos_token_ids=r.eos_token_ids, vocab_size=r.vocab_size, repetition=repetition,
                                   cache_budget_bytes=budget, mesh=mesh)
    scalar = lambda x: placement.put(np.asarray(x, np.int32), None, mesh)
    tokens, generated, reason, attended, steps = _generate_jit(
        program.static, placement.place_params(model, mesh), program.inputs.placed(mesh),
        max_new_tokens=scalar(max_new_tokens), seed=scalar(request.int32_bits(r.seed)))
    order = request.result_rows(program.split, len(arrays))  # [P, N] -> row of the sharded batch
    tokens, generated, reason = (np.asarray(x)[order] for x in (tokens, generated, reason))
    result = GenerationResult(
        tokens=tokens[..., :max_new_tokens], lengths=generated,
        finish_reasons=np.asarray(FINISH_REASONS)[reason],
        attended_tokens=np.asarray(attended)[:int(steps)].astype(np.int64),
        prompt_lengths=np.asarray([a.size for a in arrays], np.int32), attention=attention)
    if on_finish is not None:
        on_finish(result.finished_samples())
    return result
