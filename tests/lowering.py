"""Cross-platform lowering for tests: export a function for "cuda" or "tpu" on this CPU-only machine, which
runs the Pallas -> Triton / Mosaic lowerings (JAX_NOTES.md), and return the StableHLO text."""

from __future__ import annotations

from typing import Callable

import jax

# The kernels' custom-call markers in the exported module.
MARKERS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def export_mlir(fn: Callable, platform: str, *args: jax.ShapeDtypeStruct) -> str:
    """StableHLO of jax.jit(fn) exported for `platform`. jax 0.11 wants a GPU to lower Triton for, so the cuda
    export names an abstract H100 (accepted by 0.10 too); the Triton custom call is not on export's list of
    stable custom calls, so that safety check is disabled."""
    if platform == "tpu":
        return jax.export.export(jax.jit(fn), platforms=["tpu"])(*args).mlir_module()
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
        exported = jax.export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call(MARKERS["cuda"])])(*args)
    return exported.mlir_module()
