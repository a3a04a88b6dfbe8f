"""Cross-platform lowering for tests: export a function for "cuda" or "tpu" on this CPU-only machine, which
runs the Pallas -> Triton / Mosaic lowerings (docs/jax_notes.md), and return the StableHLO text."""

from __future__ import annotations

from typing import Callable

import jax

from pallas_kernels import triton_compile

# The kernels' custom-call markers in the exported module.
MARKERS = {"cuda": triton_compile.TRITON_TARGET, "tpu": "tpu_custom_call"}


def export_mlir(fn: Callable, platform: str, *args: jax.ShapeDtypeStruct) -> str:
    """StableHLO of jax.jit(fn) exported for `platform` ("cuda": see triton_compile.export_for_cuda)."""
    if platform == "tpu":
        return jax.export.export(jax.jit(fn), platforms=["tpu"])(*args).mlir_module()
    return triton_compile.export_for_cuda(fn, *args).mlir_module()
