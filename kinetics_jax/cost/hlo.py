"""Reading a compiled HLO module for the copies that make a step cost more than it reads.

A compiled program (`jit(f).lower(...).compile().as_text()`) shows what lowering hides: XLA inserts `copy` /
`copy-start` instructions when an operand's layout differs from what its consumer needs (a scatter's output
layout against a Pallas custom call's operand layout, a dot that wants its weight transposed). A copy of a KV
pool, a summary array or a weight in a decode step moves that whole array through HBM at every step.

`hbm_copies(text, shapes)` lists the copies into HBM whose shape is one of `shapes` or one layer of one (a
leading layer axis dropped or set to 1). Copies into another memory space (TPU VMEM, `S(1)` in the layout) are
the compiler staging an operand it reads anyway, and are not listed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

import numpy as np

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s(?P<op>copy|copy-start)\(")
_ARRAY = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\](?:\{(?P<layout>[^}]*)\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8, "f8e4m3fn": 1, "f8e5m2": 1}


@dataclasses.dataclass(frozen=True)
class Copy:
    """One copy instruction: its name, opcode, output shape and dtype, bytes, and the HLO line."""

    name: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    line: str

    def __str__(self) -> str:
        return f"{self.op} {self.name}: {self.dtype}{list(self.shape)} ({self.bytes / 2**20:.1f} MiB)"


def _layer_variants(shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    return {shape, shape[1:], (1,) + shape[1:]} if len(shape) > 1 else {shape}


def copies(text: str) -> list[Copy]:
    """Every copy / copy-start into HBM (memory space 0) in the module."""
    found = []
    for line in text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        arrays = list(_ARRAY.finditer(match.group("type")))
        if not arrays:
            continue
        array = arrays[0]  # copy-start's tuple (destination, source, context): the destination comes first
        layout = array.group("layout") or ""
        space = _MEMORY_SPACE.search(layout)
        if space and space.group(1) != "0":
            continue
        dims = tuple(int(d) for d in array.group("dims").split(",") if d)
        dtype = array.group("dtype")
        found.append(Copy(match.group("name"), match.group("op"), dims, dtype,
                          int(np.prod(dims, dtype=np.int64)) * _BYTES.get(dtype, 4), line.strip()))
    return found


def hbm_copies(text: str, shapes: Iterable[tuple[int, ...]]) -> list[Copy]:
    """The HBM copies in `text` of an array of one of `shapes` (or of one layer of it)."""
    watched = set().union(*(_layer_variants(tuple(s)) for s in shapes))
    return [c for c in copies(text) if c.shape in watched]
