"""Compile time of the full forward pass against depth: layers are scanned, so it should stay flat.

    python scripts/benchmark_compile.py --preset=qwen3-0.6b --layers=4,28 --seq_len=128

Compiles `model(input_ids)` from abstract shapes only (no weights are allocated), so real sizes fit anywhere.
Prints one row per depth: trace+lower seconds, compile seconds, total.
"""

from __future__ import annotations

import dataclasses
import time

from absl import flags, logging

import jax
import jax.numpy as jnp
from flax import nnx

import kinetics_jax as kj
from kinetics_jax import cli

_PRESET = flags.DEFINE_enum("preset", "qwen3-0.6b", kj.Qwen3Config.preset_names(), "Model shape to compile.")
_LAYERS = cli.define_int_list("layers", [4, 28], "Depths to compare.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Sequence length of the compiled forward.", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute and parameter dtype.")


def compile_seconds(config: kj.Qwen3Config, seq_len: int, dtype) -> tuple[float, float]:
    """(trace + lower seconds, XLA compile seconds) for the forward pass of `config` at batch 1."""
    abstract = nnx.eval_shape(lambda: kj.Qwen3ForCausalLM(config, dtype=dtype, param_dtype=dtype,
                                                          rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)

    @jax.jit
    def forward(state, ids):
        return nnx.merge(graphdef, state)(ids)

    start = time.perf_counter()
    lowered = forward.lower(state, jax.ShapeDtypeStruct((1, seq_len), jnp.int32))
    mid = time.perf_counter()
    lowered.compile()
    return mid - start, time.perf_counter() - mid


def main(argv: list[str]) -> None:
    del argv
    logging.info("process %d of %d, backend %s", jax.process_index(), jax.process_count(), jax.default_backend())
    base = kj.Qwen3Config.preset(_PRESET.value)
    dtype = jnp.dtype(_DTYPE.value)
    compile_seconds(dataclasses.replace(base, num_hidden_layers=1), _SEQ_LEN.value, dtype)  # warm-up
    rows = []
    for layers in cli.int_list(_LAYERS):
        lower, comp = compile_seconds(dataclasses.replace(base, num_hidden_layers=layers), _SEQ_LEN.value, dtype)
        rows.append((layers, lower, comp))
    print(f"\n{_PRESET.value} forward, seq_len {_SEQ_LEN.value}, {_DTYPE.value}, backend {jax.default_backend()}")
    print(f"{'layers':>6} | {'trace+lower s':>13} | {'compile s':>9} | {'total s':>7}")
    for layers, lower, comp in rows:
        print(f"{layers:>6} | {lower:>13.2f} | {comp:>9.2f} | {lower + comp:>7.2f}")


if __name__ == "__main__":
    cli.run(main)
