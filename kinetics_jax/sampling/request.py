"""A request planned for the compiled program: generate's arguments checked (`check_request`), the KV cache sized
and refused from arithmetic (`check_cache_fits`), and the plan (`plan_program`): the program's static part
(`DecodeStatic`) and one struct of host inputs (`DecodeInputs`), cut into data shards.

Shape buckets (one compilation per bucket, see `bucket`): prompt length -> next power of two (>= 16); the token
buffer -> next power of two >= max_new_tokens (the loop bound itself is a runtime value); page-table width -> next
power of two; cache pages -> multiple of 64; the prefill page writes -> next power of two. The batch (prompts x
samples) is exact.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh

from kinetics_jax.cache import NULL_PAGE, CachePlan
from kinetics_jax.checks import checked_int
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.policies import AttentionConfig
from kinetics_jax.sampling.samplers import SamplingConfig
from kinetics_jax.sampling.stops import RepetitionStop
from kinetics_jax.sharding import meshes, placement, planning
from kinetics_jax.sharding.axes import BATCH, DATA

ID_LIMIT = 2**32  # seeds and stream ids are uint32: [0, 2**32)
INT32_LIMIT = 2**31  # page ids and decode rows are int32 on device


def bucket(n: int, minimum: int = 1) -> int:
    """Next power of two >= max(n, minimum)."""
    return 1 << (max(n, minimum) - 1).bit_length()


def memory_budget() -> int:
    """Bytes a KV cache may take: free accelerator memory, or half the host RAM on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class Request(NamedTuple):
    """generate's arguments once checked: Python ints, prompts as int32 arrays, stream ids as uint32[P]."""

    prompts: list[np.ndarray]
    streams: np.ndarray
    num_samples: int
    max_new_tokens: int
    seed: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    cache_budget_bytes: int | None


def check_request(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], *, num_samples: object,
                   max_new_tokens: object, seed: object, vocab_size: object, eos_token_ids: Sequence[object],
                   stream_ids: Sequence[object] | None, cache_budget_bytes: object) -> Request:
    """Every argument of generate that is not a config object, checked (integers by checks.checked_int) with
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
    return Request(arrays, _stream_ids(stream_ids, len(arrays)), num_samples, max_new_tokens, seed, vocab_size,
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


def int32_bits(x: np.ndarray) -> np.ndarray:
    """uint32 values as the int32 values with the same bits: the program takes int32 inputs, and sample_keys
    reads only the bits of a seed or stream id."""
    return np.asarray(x, np.uint32).view(np.int32)


@dataclasses.dataclass(frozen=True)
class DecodeStatic:
    """Everything that shapes the compiled program (hashable: it is a static jit argument). samples_per_shard:
    the samples of each prompt a data shard decodes; buffer: the token buffer's length; pool_pages: the whole
    cache pool, data shards x pages per shard."""

    graphdef: nnx.GraphDef
    mesh: Mesh
    sampling: SamplingConfig
    attention: AttentionConfig
    samples_per_shard: int
    buffer: int
    pool_pages: int
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    repetition: RepetitionStop | None


class DecodeInputs(NamedTuple):
    """The compiled program's host inputs, shard-major: shard d owns rows d * R .. (d + 1) * R - 1 of every array
    (its prompts, its rows, its slice of the prefill writes); page ids are local to the shard's pool.

    prompt_ids int32[S * Pl, T] (right-padded to a length bucket); prompt_lengths and shared_pages int32[S * Pl]
    (a prompt's tokens; the page-table entries its samples share); page_table int32[S * Pl * Nl, W]; writes
    int32[3, S * n] (CachePlan.prefill_writes); row_streams / row_samples int32[S * Pl * Nl] (each row's PRNG
    stream, its uint32 bits as int32, and global sample index); row_real bool[S * Pl * Nl] (False: a padding
    prompt's row)."""

    prompt_ids: np.ndarray
    prompt_lengths: np.ndarray
    shared_pages: np.ndarray
    page_table: np.ndarray
    writes: np.ndarray
    row_streams: np.ndarray
    row_samples: np.ndarray
    row_real: np.ndarray

    @staticmethod
    def axes() -> "DecodeInputs":
        """The logical axes of each input (rows and prompts split over "data")."""
        rows = (BATCH,)
        return DecodeInputs(prompt_ids=(BATCH, None), prompt_lengths=rows, shared_pages=rows,
                            page_table=(BATCH, None), writes=(None, BATCH), row_streams=rows, row_samples=rows,
                            row_real=rows)

    def placed(self, mesh: Mesh) -> "DecodeInputs":
        """The inputs as global arrays on `mesh`."""
        return DecodeInputs(*(placement.put(x, axes, mesh) for x, axes in zip(self, self.axes())))


def _decode_inputs(plans: list[CachePlan], split: planning.DataSplit, prompts: list[np.ndarray],
                   streams: np.ndarray) -> DecodeInputs:
    """The host arrays of a request cut into data shards (see DecodeInputs)."""
    num_prompts = len(prompts)
    prompts, streams = split.pad(prompts), np.asarray(split.pad(list(streams)), np.uint32)
    prompt_len = bucket(max(p.size for p in prompts), 16)
    width = bucket(max(plan.page_table.shape[1] for plan in plans))
    n = bucket(max(plan.prefill_page.size for plan in plans))
    out: dict[str, list[np.ndarray]] = {k: [] for k in DecodeInputs._fields}
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
        out["row_streams"].append(int32_bits(np.repeat(streams[list(prompt_rows)], len(sample_rows))))
        out["row_samples"].append(np.tile(np.asarray(sample_rows, np.int32), len(prompt_rows)))
        out["row_real"].append(np.repeat(np.asarray(prompt_rows) < num_prompts, len(sample_rows)))
    return DecodeInputs(**{k: np.concatenate(v, axis=1 if k == "writes" else 0) for k, v in out.items()})


def result_rows(split: planning.DataSplit, num_prompts: int) -> np.ndarray:
    """int[P, N]: the row of the shard-major batch that holds sample s of prompt p."""
    per_shard = split.prompts_per_shard * split.samples_per_shard
    order = np.zeros((num_prompts, split.sample_groups * split.samples_per_shard), np.int64)
    for d in range(split.shards):
        prompt_rows, sample_rows = split.shard_rows(d)
        for pl, p in enumerate(prompt_rows):
            if p < num_prompts:
                order[p, list(sample_rows)] = d * per_shard + pl * split.samples_per_shard + np.arange(len(sample_rows))
    return order


@dataclasses.dataclass(frozen=True)
class Program:
    """A request planned for the compiled program: its static part, its host inputs, and how its rows are split
    over the data shards."""

    static: DecodeStatic
    inputs: DecodeInputs
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


def plan_program(model: Qwen3ForCausalLM, prompts: list[np.ndarray], streams: np.ndarray, *, num_samples: int,
                 max_new_tokens: int, sampling: SamplingConfig, attention: AttentionConfig,
                 eos_token_ids: Sequence[int], vocab_size: int, repetition: RepetitionStop | None,
                 cache_budget_bytes: int, mesh: Mesh) -> Program:
    """Plans a validated request (prompts int32 arrays, one PRNG stream each: uint32 ids) on `mesh`: the KV
    cache sized from arithmetic and refused (check_cache_fits) before anything per sample is built, then the
    cache plans per data shard and the program's inputs. The model may be abstract (compile-only planning)."""
    lengths = [a.size for a in prompts]
    check_placement(model, lengths, num_samples, max_new_tokens, attention, mesh, cache_budget_bytes)
    split, plans = planning.request_plans(lengths, num_samples, max_new_tokens, attention, mesh.shape[DATA])
    static = DecodeStatic(nnx.graphdef(model), mesh, sampling, attention, split.samples_per_shard,
                          bucket(max_new_tokens), split.shards * max(plan.num_pages for plan in plans),
                          tuple(int(e) for e in eos_token_ids), vocab_size, repetition)
    return Program(static, _decode_inputs(plans, split, prompts, streams), split)


def check_placement(model: Qwen3ForCausalLM, lengths: Sequence[int], num_samples: int, max_new_tokens: int,
                     attention: AttentionConfig, mesh: Mesh | AbstractMesh, cache_budget_bytes: int) -> None:
    """The checks of a request against the model and mesh: the policy's layers, the mesh, the cache budget."""
    attention.check_layers(model.config.num_hidden_layers)
    meshes.check_mesh(model.config, mesh)
    check_cache_fits(model, lengths, num_samples, max_new_tokens, attention, mesh, cache_budget_bytes)


def checked(model: Qwen3ForCausalLM, prompts: Sequence[Sequence[int]], mesh: Mesh | None, **arguments: object
             ) -> tuple[Request, Mesh, int]:
    """generate's arguments checked (check_request), its mesh and its cache budget in bytes per device."""
    r = check_request(model, prompts, **arguments)
    mesh = meshes.local_mesh() if mesh is None else mesh
    return r, mesh, memory_budget() if r.cache_budget_bytes is None else r.cache_budget_bytes
