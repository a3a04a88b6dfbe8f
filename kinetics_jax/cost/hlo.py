"""Reading a compiled HLO module for the copies that make a step cost more than it reads.

A compiled program (`jit(f).lower(...).compile().as_text()`) shows what lowering hides. XLA materialises an
array whenever an operand's layout differs from what its consumer needs (a scatter's output layout against a
Pallas custom call's operand, a dot that wants its weight transposed), and whenever a slice cannot be fused into
its consumer (one layer of stacked weights cut out of the stack in a layer loop). Each such array of a KV pool,
a summary or a weight is written (and read again) through HBM at every step.

`materialized(text, shapes)` lists the instructions that write a new HBM array whose shape is one of `shapes`
or one layer of one (a leading layer axis dropped or set to 1): copies, slices, transposes, fusions. Not listed:
instructions inside fused computations (they produce values, not buffers), views and aliases (parameters,
tuples, bitcasts, loops), in-place updates (dynamic-update-slice, scatter, and fusions rooted in them, which
XLA performs in the operand's buffer), custom calls (Pallas kernels: theirs are aliased outputs or results),
and arrays placed in another memory space (TPU VMEM, `S(1)` in the layout): the compiler staging an operand it
reads anyway.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

import numpy as np

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s(?P<op>[a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_ARRAY = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\](?:\{(?P<layout>[^}]*)\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
_NOT_A_BUFFER = {"parameter", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
                 "custom-call", "copy-done", "slice-done", "constant", "optimization-barrier", "after-all",
                 "broadcast", "iota"}  # broadcast / iota: new arrays from scalars (a cache being created)
_IN_PLACE = {"dynamic-update-slice", "scatter"}


@dataclasses.dataclass(frozen=True)
class Materialized:
    """One instruction writing a new HBM array: its name, opcode, output shape and dtype, bytes, HLO line."""

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


def _computations(text: str) -> dict[str, list[str]]:
    """Instruction lines of every computation of the module, by computation name."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("{")[0]:
            current = header.group("name")
            out[current] = []
        elif current is not None and _INSTRUCTION.match(line):
            out[current].append(line)
    return out


def buffers(text: str) -> list[Materialized]:
    """Every instruction outside fused computations that writes a new array into HBM (memory space 0)."""
    computations = _computations(text)
    fused, roots = set(), {}
    for name, lines in computations.items():
        for line in lines:
            match = _INSTRUCTION.match(line)
            if match.group("op") == "fusion":
                fused.update(_CALLS.findall(line))
            if line.lstrip().startswith("ROOT"):
                roots[name] = match.group("op")
    found = []
    for name, lines in computations.items():
        if name in fused:
            continue
        for line in lines:
            match = _INSTRUCTION.match(line)
            op = match.group("op")
            if op in _NOT_A_BUFFER or op in _IN_PLACE:
                continue
            if op == "fusion" and any(roots.get(c) in _IN_PLACE for c in _CALLS.findall(line)):
                continue
            array = _ARRAY.search(match.group("type"))  # copy-start's tuple: the destination comes first
            if array is None:
                continue
            space = _MEMORY_SPACE.search(array.group("layout") or "")
            if space and space.group(1) != "0":
                continue
            dims = tuple(int(d) for d in array.group("dims").split(",") if d)
            dtype = array.group("dtype")
            found.append(Materialized(match.group("name"), op, dims, dtype,
                                      int(np.prod(dims, dtype=np.int64)) * _BYTES.get(dtype, 4), line.strip()))
    return found


def materialized(text: str, shapes: Iterable[tuple[int, ...]], min_bytes: int = 2**20) -> list[Materialized]:
    """The new HBM arrays in `text` of one of `shapes` (or one layer of one), of at least `min_bytes`."""
    watched = set().union(*(_layer_variants(tuple(s)) for s in shapes))
    return [b for b in buffers(text) if b.shape in watched and b.bytes >= min_bytes]
