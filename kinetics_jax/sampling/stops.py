"""How a sample ends: the finish reasons the decode loop records, and the repetition stop."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kinetics_jax.checks import checked_int

RUNNING, EOS, LENGTH, REPETITION = 0, 1, 2, 3
FINISH_REASONS = ("running", "eos", "length", "repetition")
"""The int32 codes of the decode loop's finish reasons and their names (GenerationResult.finish_reasons)."""


@dataclasses.dataclass(frozen=True)
class RepetitionStop:
    """Stop a sample when its last `block` tokens occur `repeats` times among the `window // block` aligned
    blocks ending at the current token (Kinetics: 64-token blocks, 15 repeats, 1024-token window)."""

    block: int = 64
    repeats: int = 15
    window: int = 1024

    def __post_init__(self) -> None:
        for name in ("block", "repeats", "window"):
            object.__setattr__(self, name, checked_int(getattr(self, name), f"RepetitionStop.{name}"))
        if self.block < 1 or self.window % self.block or not 1 <= self.repeats <= self.window // self.block:
            raise ValueError(f"RepetitionStop needs block >= 1, window a multiple of block and "
                             f"1 <= repeats <= window / block; got {self}")


def repeated(tokens: jax.Array, generated: jax.Array, stop: RepetitionStop) -> jax.Array:
    """bool[B]: the last `stop.block` generated tokens repeat `stop.repeats` times in the last window."""

    def one(row: jax.Array, n: jax.Array) -> jax.Array:
        window = jax.lax.dynamic_slice(row, (jnp.maximum(n - stop.window, 0),), (stop.window,))
        blocks = window.reshape(stop.window // stop.block, stop.block)
        same = jnp.all(blocks == blocks[-1], axis=-1)
        return (n >= stop.window) & (jnp.sum(same) >= stop.repeats)

    return jax.vmap(one)(tokens, generated)
