"""Compiling Pallas Triton kernels to GPU code without a GPU: TTIR -> PTX -> cubin, with ptxas's resource report.

    kernels = triton_compile.compile_kernels(fn, *shape_structs, arch="sm_90a")
    kernels[0].registers, kernels[0].spill_bytes, kernels[0].shared_memory

`jax.export` for "cuda" runs the Pallas -> Triton lowering only. This module takes the Triton IR that lowering
hands to XLA's custom call (jaxlib <= 0.10.2 carries it in the call's backend config), compiles it with XLA's
own Triton pipeline (registered by the CUDA plugin, jax-cuda12-plugin, which needs no GPU and no CUDA toolkit
with JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1) to PTX, and assembles the PTX with ptxas (nvidia-cuda-nvcc-cu12, 12.8 or
newer for PTX 8.8), whose -v report gives registers, spills and the cubin. The Triton pipeline does not check
the shared-memory limit: `SHARED_MEMORY_LIMIT` is each architecture's opt-in maximum per block, for callers to
assert against.

`unavailable()` says why kernels cannot be compiled here (None when they can).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import jax

# Opt-in shared memory per block (bytes): sm_90 (H100 / H200) 227 KiB, sm_80 (A100) 163 KiB.
SHARED_MEMORY_LIMIT = {"sm_90a": 232_448, "sm_90": 232_448, "sm_80": 166_912}
TRITON_TARGET = "__gpu$xla.gpu.triton"


@dataclasses.dataclass(frozen=True)
class CompiledKernel:
    """One Triton kernel compiled for `arch`: PTX, ptxas's figures and the cubin size."""

    name: str
    arch: str
    num_warps: int
    num_stages: int
    shared_memory: int
    registers: int
    spill_bytes: int
    cubin_bytes: int
    ptx: str = dataclasses.field(repr=False)


def ptxas_path() -> str | None:
    """ptxas from the nvidia-cuda-nvcc wheel, or from PATH."""
    spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "ptxas"
        if candidate.exists():
            return str(candidate)
    return shutil.which("ptxas")


def unavailable() -> str | None:
    """Why Triton kernels cannot be compiled to cubin here (None: they can)."""
    from jax._src.lib import triton
    from jax._src.lib import version as jaxlib_version
    if jaxlib_version > (0, 10, 2):
        return f"jaxlib {jaxlib_version} compiles Triton kernels during lowering, which needs a GPU"
    jax.devices()  # backend start-up runs the plugins' initialisers; the CUDA plugin's registers the handler
    if not triton.has_compilation_handler("cuda"):
        return ("no Triton compiler is registered: install the CUDA plugin (jax-cuda12-plugin, the version of jax) "
                "and set JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 on a machine without CUDA")
    if ptxas_path() is None:
        return "ptxas is not installed (pip install nvidia-cuda-nvcc-cu12>=12.8)"
    return None


@contextlib.contextmanager
def _captured_triton_calls():
    """Records the backend config of every Triton custom call lowered inside the block."""
    from jax._src.pallas.triton import pallas_call_registration as registration
    calls: list[dict] = []
    original = registration.mlir.custom_call

    def spy(call_target_name, *args, backend_config=None, **kwargs):
        if call_target_name == TRITON_TARGET:
            calls.append(dict(backend_config))
        return original(call_target_name, *args, backend_config=backend_config, **kwargs)

    registration.mlir.custom_call = spy
    try:
        yield calls
    finally:
        registration.mlir.custom_call = original


def export_for_cuda(fn: Callable, *args: jax.ShapeDtypeStruct) -> jax.export.Exported:
    """jax.jit(fn) exported for "cuda" on a machine without a GPU: jax 0.11 wants a GPU to lower Triton for, so
    the export names an abstract H100 (accepted by 0.10 too); the Triton custom call is not on export's list of
    stable custom calls, so that safety check is disabled."""
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
        return jax.export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call(TRITON_TARGET)])(*args)


def _ptxas(ptx: str, arch: str) -> tuple[int, int, int]:
    """(registers, spill bytes, cubin bytes) from `ptxas -v`."""
    with tempfile.TemporaryDirectory() as tmp:
        source, cubin = os.path.join(tmp, "kernel.ptx"), os.path.join(tmp, "kernel.cubin")
        Path(source).write_text(ptx)
        done = subprocess.run([ptxas_path(), "-v", "--gpu-name", arch, "-o", cubin, source], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ptxas failed for {arch}: {done.stderr.strip()[:2000]}")
        report = done.stderr + done.stdout
        registers = re.search(r"Used (\d+) registers", report)
        spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
        return (int(registers.group(1)) if registers else 0, sum(spills), os.path.getsize(cubin))


def compile_kernels(fn: Callable, *args: jax.ShapeDtypeStruct, arch: str = "sm_90a") -> list[CompiledKernel]:
    """Every Pallas Triton kernel in jax.jit(fn)(*args), compiled to cubin for `arch` ("sm_90a", "sm_80")."""
    reason = unavailable()
    if reason:
        raise RuntimeError(f"cannot compile Triton kernels here: {reason}")
    from jax._src.lib import triton
    from jax._src.lib.mlir import ir
    jax.clear_caches()  # a cached lowering would not pass through the custom call again
    with _captured_triton_calls() as calls:
        export_for_cuda(fn, *args)
    if not calls:
        raise ValueError("the function lowers no Pallas Triton kernel")
    capability = arch.removeprefix("sm_").rstrip("a")
    out = []
    for call in calls:
        name = ir.StringAttr(call["name"]).value
        warps, stages = ir.IntegerAttr(call["num_warps"]).value, ir.IntegerAttr(call["num_stages"]).value
        result = triton.compile("cuda", ir.StringAttr(call["ir"]).value_bytes, f"{capability[:-1]}.{capability[-1]}",
                                num_warps=warps, num_ctas=1, num_stages=stages)
        registers, spills, cubin = _ptxas(result.asm, arch)
        out.append(CompiledKernel(name, arch, warps, stages, int(result.smem_bytes), registers, spills, cubin,
                                  result.asm))
    return out
