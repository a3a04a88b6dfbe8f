"""Compilation targets: TPU and GPU chips to compile programs for, on a machine that has neither.

    target = targets.TARGETS["tpu-v5p"]
    mesh = targets.mesh(target, (1, 1))            # ("data", "model") over compile-only devices of that chip
    compiled = jax.jit(step).lower(*shapes_on(mesh)).compile()   # the real TPU compiler, Mosaic included

- TPU: libtpu (the `jax[tpu]` extra) describes a TPU topology without a TPU; `jit(...).lower(...).compile()` then
  runs XLA's TPU passes and the Mosaic compiler, and `memory_analysis()` / `cost_analysis()` are filled in.
- GPU: the CUDA plugin (`jax-cuda12-plugin`) compiles for a GPU described by an XLA GpuTargetConfig (kept here as
  data, gpu_targets/*.txtpb) with no GPU and no CUDA toolkit; Triton kernels inside become sm_90a code.
  `memory_analysis()` is filled in, `cost_analysis()` is not.

`unavailable(target)` says why a target cannot be compiled for here (None when it can), so callers can refuse
or skip with the reason. The jax / libtpu / plugin versions must be the ones the program will run with.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from kinetics_jax.cost.analytic import HARDWARE, Hardware

_GPU_TARGETS = Path(__file__).with_name("gpu_targets")
# libtpu's start-up reads these; without them it warns about the missing TPU hosts, and without
# ALLOW_MULTIPLE_LIBTPU_LOAD a second process (a test's subprocess, a parallel compile) finds its lock file held.
_LIBTPU_ENV = {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_ACCELERATOR_TYPE": "v5litepod-4",
               "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


@dataclasses.dataclass(frozen=True)
class Target:
    """A chip to compile for. platform: "tpu" | "cuda"; topology: the TPU topology name (4 chips, enough for
    meshes up to 4 devices) or the GPU target description file; hbm_bytes: memory per chip; hardware: the
    analytic cost model's entry (peak FLOP/s and HBM bandwidth) for roofline times."""

    name: str
    platform: str
    topology: str
    hbm_bytes: int
    hardware: str
    chip_config: str = "default"

    @property
    def hw(self) -> Hardware:
        return HARDWARE[self.hardware]


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("tpu-v5e", "tpu", "v5e:2x2", 16 * 2**30, "TPU-v5e"),
    Target("tpu-v5p", "tpu", "v5:2x2x1", 95 * 2**30, "TPU-v5p", chip_config="megacore"),
    Target("tpu-v6e", "tpu", "v6e:2x2", 32 * 2**30, "TPU-v6e"),
    Target("cuda-h100", "cuda", "h100.txtpb", 84_929_347_584, "H100-SXM"),
    Target("cuda-h200", "cuda", "h200.txtpb", 150_754_820_096, "H200"),
)}


def target(name: str | Target) -> Target:
    """A `Target` as given, or the `TARGETS` entry of that name."""
    if isinstance(name, Target):
        return name
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    return TARGETS[name]


def unavailable(spec: str | Target) -> str | None:
    """Why programs cannot be compiled for `spec` on this machine (None: they can)."""
    t = target(spec)
    if t.platform == "tpu" and importlib.util.find_spec("libtpu") is None:
        return "libtpu is not installed (pip install 'jax[tpu]', the version of the installed jax)"
    if t.platform == "cuda":
        if not any(importlib.util.find_spec(m) for m in ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")):
            return "the CUDA plugin is not installed (pip install jax-cuda12-plugin, the version of the installed jax)"
        if os.environ.get("JAX_PLATFORMS", "") not in ("", "cpu") and "cuda" in os.environ["JAX_PLATFORMS"]:
            return "JAX_PLATFORMS names cuda: compile-only GPU devices need it unset or 'cpu'"
    return None


@functools.cache
def devices(spec: str | Target) -> tuple[jax.Device, ...]:
    """Compile-only devices of `spec`'s topology (4 TPU chips, 8 GPUs)."""
    t = target(spec)
    reason = unavailable(t)
    if reason:
        raise RuntimeError(f"cannot compile for {t.name}: {reason}")
    from jax.experimental import topologies
    if t.platform == "tpu":
        for key, value in _LIBTPU_ENV.items():
            os.environ.setdefault(key, value)
        topo = topologies.get_topology_desc(platform="tpu", topology_name=t.topology, chip_config_name=t.chip_config,
                                            chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=(False,) * 3)
    else:
        topo = topologies.get_topology_desc(platform="cuda", target_config=(_GPU_TARGETS / t.topology).read_text(),
                                            topology="1x1x8")
    return tuple(topo.devices)


def mesh(spec: str | Target, shape: tuple[int, int] = (1, 1)) -> Mesh:
    """A ("data", "model") mesh of `shape` over compile-only devices of `spec` (at most 4 TPU chips, 8 GPUs)."""
    from kinetics_jax.sharding.axes import MESH_AXES
    available = devices(spec)
    count = shape[0] * shape[1]
    if count > len(available):
        raise ValueError(f"mesh {shape[0]}x{shape[1]} needs {count} devices; the {target(spec).name} topology "
                         f"described here has {len(available)}")
    auto = (jax.sharding.AxisType.Auto,) * 2
    return Mesh(np.asarray(available[:count]).reshape(shape), MESH_AXES, axis_types=auto)
