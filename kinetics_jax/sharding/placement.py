"""Arrays on a mesh by their logical axes (axes.RULES): shardings, parameter placement, host inputs, sharding
constraints, and functions run per shard (a shard_map given logical axes)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kinetics_jax.sharding.axes import Axes, partition_spec
from kinetics_jax.sharding.meshes import check_mesh


def sharding(axes: Axes, mesh: Mesh, shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(axes, mesh, shape))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_axes(var: nnx.Variable) -> Axes:
    """A parameter's logical axis names (flax stores them as out_sharding, older releases as sharding_names)."""
    meta = var.get_metadata()
    axes = meta.get("out_sharding") or meta.get("sharding_names")
    if axes is None:
        raise ValueError(f"parameter of shape {var.get_value().shape} has no logical axis names")
    return tuple(axes)


def param_shardings(model: nnx.Module, mesh: Mesh) -> dict[tuple, NamedSharding]:
    """The NamedSharding of every parameter of `model` (real or abstract) under RULES, by state path."""
    return {path: sharding(param_axes(var), mesh, var.get_value().shape)
            for path, var in nnx.to_flat_state(nnx.state(model))}


def place_params(model: nnx.Module, mesh: Mesh) -> nnx.State:
    """The model's state with every parameter on `mesh` by RULES (arrays already placed so are not copied)."""
    target = param_shardings(model, mesh)
    flat = [(path, var.replace(jax.device_put(var.get_value(), target[path])))
            for path, var in nnx.to_flat_state(nnx.state(model))]
    return nnx.from_flat_state(flat)


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Places the model's parameters on `mesh` by RULES, in place (single-process: a multi-host model is
    loaded onto its mesh by load_checkpoint / load_model(..., mesh=...))."""
    check_mesh(model.config, mesh)
    nnx.update(model, place_params(model, mesh))
    return model


def put(value: np.ndarray, axes: Axes | None, mesh: Mesh) -> jax.Array:
    """A host array (the same on every process) as a global array on `mesh` with logical `axes` (None:
    replicated). Each process transfers only the shards its devices hold."""
    value = np.asarray(value)
    target = replicated(mesh) if axes is None else sharding(axes, mesh)
    return jax.make_array_from_callback(value.shape, target, lambda index: value[index])


def per_shard(fn: Callable, mesh: Mesh | None, in_axes: Any, out_axes: Any) -> Callable:
    """`fn` applied to each device's shards (a shard_map), with the specs given as logical axes (None leaves:
    replicated). Without a mesh, `fn` itself. Used for the parts that must see whole local pages: cache writes,
    page selection and the decode kernels."""
    if mesh is None:
        return fn
    to_spec = lambda axes: PartitionSpec() if axes is None else partition_spec(axes, mesh)
    in_specs = jax.tree.map(to_spec, in_axes, is_leaf=_is_axes)
    out_specs = jax.tree.map(to_spec, out_axes, is_leaf=_is_axes)
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _is_axes(x: Any) -> bool:
    """A leaf of an axes tree: a tuple of logical names (None entries allowed), or None."""
    return x is None or (isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x))


def constrain(tree: Any, axes: Any, mesh: Mesh) -> Any:
    """with_sharding_constraint by logical axes (a tree of axes tuples matching `tree`; None leaves: absent)."""
    shardings = jax.tree.map(lambda a: a and sharding(a, mesh), axes, is_leaf=_is_axes)
    return jax.lax.with_sharding_constraint(tree, shardings)
