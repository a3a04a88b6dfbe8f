"""Measured counters: XLA's cost analysis of one compiled decode step, and device time from a jax.profiler trace.

- `decode_step_cost`: FLOPs and bytes XLA counts for the non-attention part of ONE compiled decode step. XLA
  counts a while-loop body once (docs/jax_notes.md), so the cost of the decode loop is this times the number of
  steps, never the cost analysis of the loop itself (the layer scan is unrolled for the same reason). Attention
  runs in Pallas kernels, custom calls XLA cannot see into: its share comes from the analytic model.
- `profile`: runs a function under `jax.profiler.trace` (the directory opens in TensorBoard / xprof), reads
  the xplane back with `jax.profiler.ProfileData`, and sums the time of the XLA ops it executed by family:
  "attention" (the Pallas kernels), "matmul" (dots, GEMM fusions) and "other". With an analytic
  `CostBreakdown` of the same work it gives achieved FLOP/s and bytes/s, and measured against predicted
  seconds.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from kinetics_jax.config import Qwen3Config
from kinetics_jax.cost.analytic import CostBreakdown
from kinetics_jax.model import Qwen3ForCausalLM

FAMILIES = ("attention", "matmul", "other")
# Pallas kernel custom calls (Triton on GPU, Mosaic on TPU): in this project, the decode-attention kernels.
_KERNEL_TARGETS = ("triton", "tpu_custom_call", "mosaic")
_MATMUL_NAMES = ("dot", "gemm", "matmul", "convolution", "cublas", "cutlass")
_KERNEL_NAMES = ("paged_decode", "attention", "attn")


@dataclasses.dataclass(frozen=True)
class StepCost:
    """XLA cost analysis of one compiled decode step: flops, bytes accessed (XLA's estimate of memory traffic)
    and transcendentals, for the whole batch."""

    flops: float
    bytes_accessed: float
    transcendentals: float


def _cost_dict(compiled: Any) -> dict[str, float]:
    analysis = compiled.cost_analysis()
    return analysis[0] if isinstance(analysis, (list, tuple)) else analysis  # older jax: one dict per device


def decode_step_cost(config: Qwen3Config, *, batch: int, dtype: Any = jnp.bfloat16) -> StepCost:
    """XLA's count for the non-attention part of one decode step of `batch` sequences: embedding, every layer's
    projections, norms, RoPE and MLP / MoE, the final norm and the logits, for a model of `config` in `dtype`.

    Attention (the paged kernels, whose custom calls XLA cannot see into) and the cache writes are left out:
    their FLOPs and bytes come from the analytic model. Nothing is allocated (abstract shapes), and the layer
    scan is unrolled so that XLA counts every layer, not one loop body.
    """
    model = nnx.eval_shape(lambda: Qwen3ForCausalLM(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    for block in model.blocks:
        block.unroll = True
    graphdef, state = nnx.split(model)

    def step(state, tokens, positions):
        def attend(q, k, v, layer, carry):  # keeps k and v alive at the cost of two reductions
            return q + (jnp.mean(k) + jnp.mean(v)).astype(q.dtype), carry, None

        model = nnx.merge(graphdef, state)
        hidden, _, _ = model.hidden_states(tokens[:, None], positions[:, None], attend)
        return model.logits(hidden[:, 0])

    vector = jax.ShapeDtypeStruct((batch,), jnp.int32)
    cost = _cost_dict(jax.jit(step).lower(state, vector, vector).compile())
    return StepCost(float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                    float(cost.get("transcendentals", 0.0)))


@dataclasses.dataclass(frozen=True)
class ProfileReport:
    """Time of the XLA ops one traced call executed, summed per family (seconds), and the comparison with an
    analytic cost of the same work when one was given (achieved rates over the summed op time)."""

    logdir: str
    trace_file: str
    wall_seconds: float
    op_seconds: dict[str, float]
    cost: CostBreakdown | None = None

    @property
    def device_seconds(self) -> float:
        return sum(self.op_seconds.values())

    @property
    def achieved_flops_per_s(self) -> float | None:
        return None if self.cost is None else self.cost.compute_flops / self.device_seconds

    @property
    def achieved_bytes_per_s(self) -> float | None:
        return None if self.cost is None else self.cost.memory_bytes / self.device_seconds

    @property
    def predicted_seconds(self) -> float | None:
        """Seconds the eFLOPs model predicts for this work on the cost's hardware."""
        return None if self.cost is None else self.cost.seconds


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=(?:\{([^}]*)\}|%?([\w.\-]+))")


def hlo_families(hlo_text: str) -> dict[str, str]:
    """Family of every instruction of a compiled HLO module: a Pallas custom call is "attention"; a dot, a
    convolution, a GEMM custom call, or a fusion whose computation holds one of those (searched through called
    computations) is "matmul"; everything else is "other"."""
    own: dict[str, set[str]] = {}     # computation -> families of its own instructions
    calls: dict[str, set[str]] = {}   # computation -> computations it calls
    instructions: dict[str, tuple[str, str, set[str]]] = {}  # name -> (opcode, line, called computations)
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("{")[0]:
            current = header.group(1)
            own[current], calls[current] = set(), set()
            continue
        match = _INSTRUCTION.match(line)
        if not match or current is None:
            continue
        name, opcode = match.groups()
        called = {c.strip().lstrip("%") for braced, single in _CALLED.findall(line)
                  for c in (braced or single).split(",") if c.strip()}
        instructions[name] = (opcode, line, called)
        calls[current] |= called
        own[current].add(_leaf_family(opcode, line))

    def reach(computation: str, seen: set[str]) -> set[str]:
        if computation in seen:
            return set()
        seen.add(computation)
        found = set(own.get(computation, ()))
        for callee in calls.get(computation, ()):
            found |= reach(callee, seen)
        return found

    families = {}
    for name, (opcode, line, called) in instructions.items():
        found = {_leaf_family(opcode, line)}
        for callee in called:
            found |= reach(callee, set())
        families[name] = next(f for f in FAMILIES if f in found)
    return families


def _leaf_family(opcode: str, line: str) -> str:
    if opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', line)
        target = target.group(1).lower() if target else ""
        if any(k in target for k in _KERNEL_TARGETS):
            return "attention"
        return "matmul" if any(k in target for k in _MATMUL_NAMES) else "other"
    return "matmul" if opcode in ("dot", "convolution") else "other"


def _name_family(name: str) -> str:
    """Family from an op or kernel name alone (ops of programs whose HLO was not available)."""
    lowered = name.lower()
    if any(k in lowered for k in _KERNEL_NAMES):
        return "attention"
    return "matmul" if any(k in lowered for k in _MATMUL_NAMES) else "other"


def _latest_trace(logdir: str) -> str:
    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if not paths:
        raise FileNotFoundError(f"jax.profiler wrote no *.xplane.pb under {logdir}/plugins/profile")
    return max(paths, key=os.path.getmtime)


def op_seconds(trace_file: str, families: dict[tuple[str, str], str] | None = None) -> dict[str, float]:
    """Seconds per family of the XLA op events in an xplane file (events with an "hlo_op" stat). Only leaf
    events count: an event that encloses later events of its line (a while loop, a call) is a container and its
    time is already in its children. families: (hlo_module, hlo_op) -> family; other ops go by name."""
    data = jax.profiler.ProfileData.from_file(trace_file)
    totals = dict.fromkeys(FAMILIES, 0.0)
    for plane in data.planes:
        for line in plane.lines:
            events = []
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    events.append((event.start_ns, event.duration_ns, str(stats.get("hlo_module", "")),
                                   str(stats["hlo_op"]), event.name))
            events.sort()
            for i, (start, duration, module, op, name) in enumerate(events):
                if i + 1 < len(events) and events[i + 1][0] < start + duration:
                    continue  # a container: the next op starts inside it
                family = (families or {}).get((module, op)) or _name_family(f"{op} {name}")
                totals[family] += duration * 1e-9
    return totals


def profile(fn: Callable[..., Any], *args: Any, logdir: str, cost: CostBreakdown | None = None) -> ProfileReport:
    """Runs fn(*args) once to compile, then once under jax.profiler.trace(logdir), and sums its ops' time per
    family. If fn is jitted its compiled HLO classifies the ops exactly; otherwise op names decide. `cost`: the
    analytic cost of the traced call's work, for achieved rates and predicted seconds."""
    jax.block_until_ready(fn(*args))
    families = None
    if hasattr(fn, "lower"):
        compiled = fn.lower(*args).compile()
        module = re.match(r"HloModule ([\w.\-]+)", compiled.as_text())
        if module:
            families = {(module.group(1), op): family for op, family in hlo_families(compiled.as_text()).items()}
    os.makedirs(logdir, exist_ok=True)
    with jax.profiler.trace(logdir):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        wall = time.perf_counter() - start
    trace_file = _latest_trace(logdir)
    return ProfileReport(logdir, trace_file, wall, op_seconds(trace_file, families), cost)
