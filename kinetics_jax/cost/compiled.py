"""What a request costs on a chip, read off the compiled program: the decode step and prefill `generate` runs,
compiled for a TPU or GPU target (cost/targets.py) on a machine that has neither.

    request = compiled.Request(kj.Qwen3Config.preset("qwen3-8b"), attention, num_prompts=64, context=4096)
    report = compiled.report(request, "tpu-v5p")
    report.step.temp_bytes, report.bytes_ratio, report.step.copies

The decode step is compiled the way the generate loop runs it: one `decode.decode_step` with the cache donated
(its loop carries the cache), the mesh's devices choosing the kernels and their split count, at a context of
`context` cached tokens. Figures are per chip:

- argument / output / alias / temp bytes: XLA's memory analysis of the program as run (layers scanned);
- XLA flops, bytes accessed and its own time estimate: XLA's cost analysis of the same step with its layers
  unrolled (XLA counts a loop body once). Pallas kernels report their own estimates (pl.CostEstimate: the pages
  of their lists); XLA gives no cost analysis for GPU programs (None);
- analytic bytes: what the step must read: the weights (the embedding table only for the B rows it gathers,
  unless it is also the output projection), the KV and block summaries the policy reads (cost.analytic's
  decode_step_reads, with the prompt's pages read once for its samples) and the KV it writes;
- roofline seconds: max(analytic bytes / HBM bandwidth, analytic FLOPs / peak) from the hardware table;
- a request whose arguments (weights and cache) exceed the chip's HBM is refused before compiling, and XLA's
  cost analysis is skipped for a step that does not fit;
- copies: HBM copies of a KV pool, a summary array or a weight (cost.hlo.materialized), which must be none.

`generate_program` and `decode_chunk_program` give the whole static generate loop and the continuous engine's
K-step decode chunk (sampling.chunk) with their abstract arguments, for the same checks on the programs as run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from kinetics_jax.policies import AttentionConfig
from kinetics_jax.cache import KVCache, PagedLayout
from kinetics_jax.checkpoint import layout
from kinetics_jax.config import Qwen3Config
from kinetics_jax.cost import analytic, hlo, targets
from kinetics_jax.sampling import chunk as programs, decode, engine, request as planned
from kinetics_jax.sampling.prefill import prefill
from kinetics_jax.sampling.request import DecodeInputs
from kinetics_jax.sampling.samplers import SamplingConfig
from kinetics_jax.sampling.scheduler import SlotInputs
from kinetics_jax.sharding import meshes, placement, planning
from kinetics_jax.sharding.axes import BATCH, MESH_AXES


@dataclasses.dataclass(frozen=True)
class Request:
    """num_prompts x num_samples sequences decoded together, each with `context` cached tokens at the compiled
    step (prompt_len of them its prompt's; default context - 1), in `dtype`, on a (data, model) mesh."""

    config: Qwen3Config
    attention: AttentionConfig
    num_prompts: int
    context: int
    num_samples: int = 1
    prompt_len: int | None = None
    dtype: str = "bfloat16"
    mesh_shape: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        for name in ("num_prompts", "context", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Request.{name} must be an integer >= 1, got {value!r}")
        if self.context < 2:
            raise ValueError(f"Request.context must be >= 2 (a prompt token and the decoded one), got {self.context}")
        prompt = self.context - 1 if self.prompt_len is None else self.prompt_len
        if not 1 <= prompt < self.context:
            raise ValueError(f"Request.prompt_len must be in [1, context = {self.context}), got {self.prompt_len}")
        object.__setattr__(self, "prompt_len", prompt)
        self.attention.check_layers(self.config.num_hidden_layers)

    @property
    def rows(self) -> int:
        return self.num_prompts * self.num_samples

    @property
    def max_new_tokens(self) -> int:
        """The budget whose last decode step is at `context` cached tokens."""
        return self.context - self.prompt_len + 1


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """One compiled program on one chip (see the module doc). error: why it did not compile (then the rest is
    None or empty)."""

    name: str
    compiled: bool
    error: str | None = None
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    temp_bytes: int | None = None
    xla_flops: float | None = None
    xla_bytes_accessed: float | None = None
    xla_seconds: float | None = None
    copies: tuple[hlo.Materialized, ...] = ()
    hlo_text: str | None = dataclasses.field(default=None, repr=False)

    @property
    def peak_bytes(self) -> int | None:
        """Arguments + outputs not aliased to them + temporaries: what the chip must hold."""
        if not self.compiled:
            return None
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


@dataclasses.dataclass(frozen=True)
class Report:
    """The decode step and prefill of a request on a target, with the analytic figures per chip."""

    request: Request
    target: targets.Target
    step: ProgramCost
    prefill: ProgramCost
    analytic_bytes: int
    analytic_flops: int
    analytic_terms: dict[str, int]

    @property
    def bytes_ratio(self) -> float | None:
        """XLA's bytes accessed over the analytic bytes of the step (None without XLA's count)."""
        if self.step.xla_bytes_accessed is None:
            return None
        return self.step.xla_bytes_accessed / self.analytic_bytes

    @property
    def roofline_seconds(self) -> float:
        hw = self.target.hw
        return max(self.analytic_bytes / hw.hbm_bytes_per_s, self.analytic_flops / hw.peak_flops)

    @property
    def fits(self) -> bool:
        return all(p.compiled and p.peak_bytes <= self.target.hbm_bytes for p in (self.step, self.prefill))

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (compile_report.py --json)."""
        r = self.request
        step = self.step
        return {
            "target": self.target.name, "model_layers": r.config.num_hidden_layers, "attention": r.attention.describe(),
            "num_prompts": r.num_prompts, "num_samples": r.num_samples, "context": r.context,
            "prompt_len": r.prompt_len, "dtype": r.dtype, "mesh_shape": list(r.mesh_shape),
            "compiled": step.compiled and self.prefill.compiled, "error": step.error or self.prefill.error,
            "argument_bytes": step.argument_bytes, "output_bytes": step.output_bytes, "alias_bytes": step.alias_bytes,
            "temp_bytes": step.temp_bytes, "xla_bytes_accessed": step.xla_bytes_accessed, "xla_flops": step.xla_flops,
            "analytic_bytes": self.analytic_bytes, "analytic_flops": self.analytic_flops,
            "analytic_terms": self.analytic_terms, "bytes_ratio": self.bytes_ratio,
            "roofline_seconds": self.roofline_seconds, "xla_seconds": step.xla_seconds,
            "hbm_bytes": self.target.hbm_bytes, "fits": self.fits,
            "copies": [str(c) for c in step.copies],
            "prefill": {"compiled": self.prefill.compiled, "error": self.prefill.error,
                        "argument_bytes": self.prefill.argument_bytes, "output_bytes": self.prefill.output_bytes,
                        "temp_bytes": self.prefill.temp_bytes, "copies": [str(c) for c in self.prefill.copies]},
        }


# ------------------------------------------------------------------------------------------------ programs
def _abstract_model(request: Request, unroll: bool) -> nnx.Module:
    dtype = jnp.dtype(request.dtype)
    model = layout.abstract_model(request.config, dtype=dtype, param_dtype=dtype)
    for block in model.blocks:
        block.unroll = unroll
    return model


def _abstract_state(model: nnx.Module, mesh: Mesh) -> nnx.State:
    shardings = placement.param_shardings(model, mesh)
    flat = [(path, var.replace(jax.ShapeDtypeStruct(var.get_value().shape, var.get_value().dtype,
                                                    sharding=shardings[path])))
            for path, var in nnx.to_flat_state(nnx.state(model))]
    return nnx.from_flat_state(flat)


def _sds(value: np.ndarray, axes, mesh: Mesh) -> jax.ShapeDtypeStruct:
    target = placement.replicated(mesh) if axes is None else placement.sharding(axes, mesh)
    return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=target)


def _program(request: Request, mesh: Mesh, model: nnx.Module) -> planned.Program:
    prompts = [np.zeros(request.prompt_len, np.int32)] * request.num_prompts
    return planned.plan_program(model, prompts, np.arange(request.num_prompts), num_samples=request.num_samples,
                                max_new_tokens=request.max_new_tokens, sampling=SamplingConfig(),
                                attention=request.attention, eos_token_ids=(), vocab_size=request.config.vocab_size,
                                repetition=None, cache_budget_bytes=2**62, mesh=mesh)


def _exact_width(request: Request, program: planned.Program) -> np.ndarray:
    """The program's page table cut to the pages the sequences have (generate rounds the width up to a power of
    two; the step reads only the pages it lists, but the kernels' static cost estimates count the width)."""
    a = request.attention
    width = -(-(request.context + a.page_offset) // a.cache_page_size)
    return program.inputs.page_table[:, :width]


def decode_step_program(request: Request, mesh: Mesh, *, counting: bool = False) -> tuple[Callable, tuple]:
    """(jitted step with the cache donated, its abstract arguments) for one decode step of `request` on `mesh`.
    counting: the program XLA's cost analysis should see: layers unrolled (XLA counts a loop body once) and
    the rows' positions known while tracing (numpy), so that the policy's dense / sparse choice is made then
    and only the branch the step takes is compiled (XLA charges a conditional for its costlier branch)."""
    model = _abstract_model(request, unroll=counting)
    program = _program(request, mesh, model)
    graphdef, state = nnx.split(model)
    a = request.attention
    dtype = jnp.dtype(request.dtype)
    layout = PagedLayout.of(a, meshes.kv_replicas(request.config, mesh))
    cache = jax.eval_shape(lambda: layout.zeros(request.config, program.static.pool_pages, dtype))
    axes = layout.axes()
    cache = KVCache(*(None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                  sharding=placement.sharding(ax, mesh, x.shape))
                      for x, ax in zip(cache, axes)))
    rows = (BATCH,)
    table = _exact_width(request, program)
    batch = table.shape[0]
    vector = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=placement.sharding(rows, mesh))
    active = jax.ShapeDtypeStruct((batch,), jnp.bool_, sharding=placement.sharding(rows, mesh))
    shared = _sds(program.inputs.shared_pages, rows, mesh)
    num_samples = program.static.samples_per_shard

    positions = np.full((batch,), request.context - 1, np.int32)
    if counting:  # the rows as constants: XLA folds the policy's branch (dense / sparse) for this context
        def step(state, cache, page_table, shared_pages):
            return decode.decode_step(nnx.merge(graphdef, state), cache, jnp.zeros((batch,), jnp.int32),
                                      positions, page_table, jnp.ones((batch,), bool), a, num_samples,
                                      shared_pages, mesh)

        return jax.jit(step, donate_argnums=(1,)), (_abstract_state(model, mesh), cache,
                                                     _sds(table, (BATCH, None), mesh), shared)

    def step(state, cache, tokens, positions, page_table, active, shared_pages):
        return decode.decode_step(nnx.merge(graphdef, state), cache, tokens, positions, page_table, active, a,
                                  num_samples, shared_pages, mesh)

    args = (_abstract_state(model, mesh), cache, vector, vector, _sds(table, (BATCH, None), mesh),
            active, shared)
    return jax.jit(step, donate_argnums=(1,)), args


def prefill_program(request: Request, mesh: Mesh) -> tuple[Callable, tuple]:
    """(jitted prefill, its abstract arguments): the request's prompts run and written into a new cache."""
    model = _abstract_model(request, unroll=False)
    program = _program(request, mesh, model)
    graphdef, state = nnx.split(model)

    def run(state, prompt_ids, prompt_lengths, writes):
        return prefill(nnx.merge(graphdef, state), prompt_ids, prompt_lengths, writes, program.static.pool_pages,
                       request.attention, mesh)

    inputs, axes = program.inputs, DecodeInputs.axes()
    args = (_abstract_state(model, mesh),) + tuple(_sds(getattr(inputs, name), getattr(axes, name), mesh)
                                                   for name in ("prompt_ids", "prompt_lengths", "writes"))
    return jax.jit(run), args


def generate_program(request: Request, mesh: Mesh) -> tuple[Callable, tuple, dict]:
    """(jitted generate program, its abstract positional and keyword arguments): prefill and the whole decode
    loop, as kj.generate compiles them for `request` (max_new_tokens = request.max_new_tokens)."""
    model = _abstract_model(request, unroll=False)
    program = _program(request, mesh, model)
    state = _abstract_state(model, mesh)
    inputs = DecodeInputs(*(_sds(value, axes, mesh) for value, axes in zip(program.inputs, DecodeInputs.axes())))
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=placement.replicated(mesh))
    fn = jax.jit(functools.partial(engine._generate_impl, program.static))  # _generate_jit with static bound
    return fn, (state, inputs), dict(max_new_tokens=scalar, seed=scalar)


def decode_chunk_program(request: Request, mesh: Mesh, *, chunk: int = 8) -> tuple[Callable, tuple]:
    """(jitted decode chunk with the engine state donated, its abstract arguments): the continuous engine's
    program (sampling.chunk.decode_chunk) running up to `chunk` steps over request.rows slots, each slot's page
    table as wide as `context` + chunk tokens need, from a pool of exactly the pages those slots hold; the
    samples of a prompt read its pages together (the cascade) when request.num_samples > 1."""
    model = _abstract_model(request, unroll=False)
    a = request.attention
    dtype = jnp.dtype(request.dtype)
    layout = PagedLayout.of(a, meshes.kv_replicas(request.config, mesh))
    slots, shards = request.rows, mesh.shape[MESH_AXES[0]]
    width = -(-(request.context + chunk + a.page_offset) // a.cache_page_size)
    pool_pages = shards + slots * width  # each shard's null page and every slot's pages
    static = programs.EngineStatic(
        graphdef=nnx.graphdef(model), mesh=mesh, sampling=SamplingConfig(), attention=a, max_num_seqs=slots,
        chunk=chunk, buffer=request.max_new_tokens + chunk, pool_pages=pool_pages, eos_token_ids=(),
        vocab_size=request.config.vocab_size, repetition=None,
        share_width=min(request.num_samples, slots // shards))
    state = jax.eval_shape(lambda: programs.EngineState(
        layout.zeros(request.config, pool_pages, dtype),
        jnp.zeros((static.buffer, request.config.num_hidden_layers), jnp.int32),
        jnp.zeros((slots, 0), jnp.int32)))
    cache = KVCache(*(None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                  sharding=placement.sharding(ax, mesh, x.shape))
                      for x, ax in zip(state.cache, layout.axes())))
    engine_state = programs.EngineState(cache, _sds(np.zeros(state.attended.shape, np.int32), None, mesh),
                                        _sds(np.zeros((slots, 0), np.int32), (BATCH, None), mesh))
    placed = programs.PlacedSlots(_sds(np.zeros((slots, width), np.int32), (BATCH, None), mesh),
                                  _sds(np.zeros((len(SlotInputs._fields) - 1, slots), np.int32), (None, BATCH),
                                       mesh))
    scalar = _sds(np.zeros((), np.int32), None, mesh)
    fn = jax.jit(functools.partial(programs._chunk_impl, static), donate_argnums=(1,))  # decode_chunk, bound
    return fn, (_abstract_state(model, mesh), engine_state, placed, scalar, scalar, scalar)


# ------------------------------------------------------------------------------------------------ analysis
def _shards(args: tuple) -> list[tuple[tuple[int, ...], int]]:
    """(per-chip shape, bytes) of every abstract array in `args` (each leaf's shard on one device)."""
    out = []
    for leaf in jax.tree.leaves(args):
        shape = tuple(leaf.sharding.shard_shape(leaf.shape))
        out.append((shape, math.prod(shape) * leaf.dtype.itemsize))
    return out


def watched_shapes(args: tuple) -> list[tuple[int, ...]]:
    """Per-chip shapes of a program's arrays of 1 MiB or more (the KV pools, the summaries, the parameters): a
    step must not copy them (hlo.materialized also matches one layer of each)."""
    return [shape for shape, size in _shards(args) if size >= 2**20]


def argument_bytes(args: tuple) -> int:
    """Bytes per chip of a program's abstract arguments."""
    return sum(size for _, size in _shards(args))


def _counting_options(t: targets.Target) -> dict[str, Any]:
    """Compiler options of the counting compile: on TPU, memory-space assignment off. With it on, XLA stages
    operands into VMEM by copies, and its cost analysis counts a staged weight three times (the HBM read, the
    VMEM write, the consumer's VMEM read) where the chip reads it from HBM once."""
    if t.platform != "tpu":
        return {}
    return {"xla_gf_vmem_memory_space_assignment": False, "xla_vf_vmem_memory_space_assignment": False}


def _cost(compiled) -> dict[str, float] | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return analysis or None


def _compile(name: str, fn: Callable, args: tuple, shapes: list[tuple[int, ...]], keep_hlo: bool) -> ProgramCost:
    try:
        compiled = fn.lower(*args).compile()
    except Exception as e:  # the compiler's own message (VMEM / HBM out of memory, an unsupported kernel)
        return ProgramCost(name, False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:500]}")
    memory = compiled.memory_analysis()
    text = compiled.as_text()
    return ProgramCost(name, True, argument_bytes=int(memory.argument_size_in_bytes),
                       output_bytes=int(memory.output_size_in_bytes), alias_bytes=int(memory.alias_size_in_bytes),
                       temp_bytes=int(memory.temp_size_in_bytes), copies=tuple(hlo.materialized(text, shapes)),
                       hlo_text=text if keep_hlo else None)


def analytic_step(request: Request, mesh_shape: tuple[int, int]) -> tuple[int, int, dict[str, int]]:
    """(bytes, FLOPs, {term: bytes}) one decode step of `request` must move / do per chip."""
    c, a = request.config, request.attention
    reads = analytic.decode_step_reads(c, a, context=request.context, prompt_len=request.prompt_len,
                                       num_prompts=request.num_prompts, num_samples=request.num_samples)
    data, model_axis = mesh_shape
    replicas = max(model_axis // c.num_key_value_heads, 1)
    kv_split = data * model_axis / replicas  # rows over "data", KV heads (with their copies) over "model"
    terms = {name: int(value / kv_split) for name, value in reads.bytes(c, a, request.dtype).items()}
    abstract_mesh = jax.sharding.AbstractMesh(tuple(mesh_shape), MESH_AXES)
    model = _abstract_model(request, unroll=False)
    params = planning.param_bytes_per_device(model, abstract_mesh)
    itemsize = jnp.dtype(request.dtype).itemsize
    if not c.tie_word_embeddings:  # the input embedding: only the rows gathered
        vocab_split = model_axis if c.vocab_size % model_axis == 0 else 1
        params -= c.vocab_size * c.hidden_size * itemsize // vocab_split
        params += request.rows // data * c.hidden_size * itemsize
    terms["weights"] = params
    flops = (2 * c.num_active_params() * request.rows + reads.flops(c, a)) // (data * model_axis)
    return sum(terms.values()), flops, terms


def report(request: Request, target: str | targets.Target, *, keep_hlo: bool = False) -> Report:
    """Compiles `request`'s decode step (as run, and with its layers unrolled for XLA's cost analysis) and its
    prefill for `target`, and sets them beside the analytic figures."""
    t = targets.target(target)
    mesh = targets.mesh(t, request.mesh_shape)
    meshes.check_mesh(request.config, mesh)
    step_fn, step_args = decode_step_program(request, mesh)
    shapes = watched_shapes(step_args)
    held = argument_bytes(step_args)
    total, flops, terms = analytic_step(request, request.mesh_shape)
    if held > t.hbm_bytes:  # refused before compiling: the weights and the cache alone exceed the chip
        why = (f"the weights and KV cache need {held / 2**30:.2f} GiB per chip, more than its "
               f"{t.hbm_bytes / 2**30:.2f} GiB of HBM")
        step = ProgramCost("decode_step", False, error=why, argument_bytes=held)
        return Report(request, t, step, ProgramCost("prefill", False, error=why), total, flops, terms)
    step = _compile("decode_step", step_fn, step_args, shapes, keep_hlo)
    if step.compiled and step.peak_bytes <= t.hbm_bytes:
        unrolled_fn, unrolled_args = decode_step_program(request, mesh, counting=True)
        cost = _cost(unrolled_fn.lower(*unrolled_args).compile(compiler_options=_counting_options(t)))
        if cost is not None:
            step = dataclasses.replace(step, xla_flops=float(cost.get("flops", 0.0)),
                                       xla_bytes_accessed=float(cost.get("bytes accessed", 0.0)),
                                       xla_seconds=cost.get("optimal_seconds"))
    prefill = _compile("prefill", *prefill_program(request, mesh), shapes, keep_hlo=False)
    return Report(request, t, step, prefill, total, flops, terms)
