"""Logical axis names, the one table mapping them to mesh axes, and the specs it gives (the MaxText scheme).

Every array the framework places carries one logical name per dimension: the parameters (created with these
names by model/layers.py), the KV cache (`CACHE_POOL`, `CACHE_SUMMARY`) and the decode activations. `RULES` maps
each logical name to a mesh axis:

- "model" (tensor parallel): attention heads (query and KV), the MLP hidden units, the MoE experts and the
  vocabulary. The KV cache is split by KV head, so a device holds the pages of its heads only.
- "data" (data parallel): the decode rows (prompts x samples) and the cache pages (see planning.DataSplit).

A dimension that the table maps to an axis is split only if the axis size divides it (with `shape` given);
otherwise it is replicated (e.g. a vocabulary of 160 over 3 devices).
"""

from __future__ import annotations

from typing import Sequence

from jax.sharding import AbstractMesh, Mesh, PartitionSpec

# Mesh axes.
DATA, MODEL = "data", "model"
MESH_AXES = (DATA, MODEL)

# Logical axes of the parameters.
EMBED, VOCAB, HEADS, KV_HEADS, HEAD_DIM, MLP, EXPERTS, LAYERS = (
    "embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "experts", "layers")

# Logical axes of activations and the KV cache.
BATCH = "batch"              # decode rows (prompt x sample), or prompts in prefill
CACHE_PAGES = "cache_pages"  # the page pool
PAGE_SLOTS = "page_slots"    # tokens within a page
SEQUENCE = "sequence"        # token positions of a sequence (prefill)

Axes = tuple[str | None, ...]

RULES: tuple[tuple[str, str | None], ...] = (
    (BATCH, DATA),
    (CACHE_PAGES, DATA),
    (HEADS, MODEL),
    (KV_HEADS, MODEL),
    (EXPERTS, MODEL),   # expert parallelism: whole experts per device
    (MLP, MODEL),       # dense MLPs; in an MoE weight the experts axis already took "model"
    (VOCAB, MODEL),
    (EMBED, None),
    (HEAD_DIM, None),
    (LAYERS, None),
    (PAGE_SLOTS, None),
    (SEQUENCE, None),
)
"""Logical axis -> mesh axis (None: replicated). A mesh axis is used at most once per array: a later logical
axis that maps to an axis already taken is replicated."""

# The KV cache's fields (cache.KVCache): pools [L, Hkv, pages, page_size, D] and summaries [L, pages, Hkv, D].
CACHE_POOL: Axes = (LAYERS, KV_HEADS, CACHE_PAGES, PAGE_SLOTS, HEAD_DIM)
CACHE_SUMMARY: Axes = (LAYERS, CACHE_PAGES, KV_HEADS, HEAD_DIM)


def mesh_axis(logical: str | None) -> str | None:
    """The mesh axis RULES maps a logical axis to (None: replicated)."""
    if logical is None:
        return None
    for name, axis in RULES:
        if name == logical:
            return axis
    raise KeyError(f"logical axis {logical!r} has no entry in kinetics_jax.sharding.axes.RULES")


def partition_spec(axes: Axes, mesh: Mesh | AbstractMesh, shape: Sequence[int] | None = None) -> PartitionSpec:
    """PartitionSpec for an array with logical `axes`. With `shape`, a dimension the mesh axis does not divide
    is replicated instead."""
    used: set[str] = set()
    spec = []
    for i, logical in enumerate(axes):
        axis = mesh_axis(logical)
        if axis is not None and (axis in used or (shape is not None and shape[i] % mesh.shape[axis])):
            axis = None
        if axis is not None:
            used.add(axis)
        spec.append(axis)
    return PartitionSpec(*spec)
