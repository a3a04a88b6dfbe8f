"""The canonical, per-layer parameter layout shared by every checkpoint format.

A *canonical key* names one unstacked array in the model's own layout ([in, out] kernels, heads split out;
the q/k/v projections are [heads, head_dim, in], as a TPU matmul reads them):

    embed_tokens.embedding, norm.scale, lm_head,
    layers.{i}.input_layernorm.scale, layers.{i}.self_attn.q_proj, layers.{i}.mlp.gate_proj, ...

The model stores decoder layers stacked per `LayerSegment` (`blocks.{s}.layer.*` with a leading "layers" axis);
the canonical layout stores each layer on its own, so checkpoints do not depend on how layers are grouped for
`scan`, and a converter can write one layer at a time. The keys are derived from the model definition itself,
never listed by hand.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jax.sharding import Mesh

from kinetics_jax.config import Qwen3Config
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.model.layers import DType
from kinetics_jax.sharding import meshes, placement

# read(keys, target, stacked) -> the array for one model leaf, with target's shape, dtype and sharding. With
# stacked=True,
# `keys` are the canonical keys of the leaf's layers (in order) and the result stacks them on axis 0; otherwise
# `keys` holds one key.
ReadFn = Callable[[Sequence[str], jax.ShapeDtypeStruct, bool], jax.Array]


def _leaf_keys(config: Qwen3Config, path: tuple) -> tuple[tuple[str, ...], bool]:
    """Model-state path -> (canonical keys, stacked)."""
    names = [str(p) for p in path]
    if names[0] == "blocks":
        segment = config.layer_segments()[int(names[1])]
        rel = ".".join(names[3:])  # skip "blocks", segment index, "layer"
        return tuple(f"layers.{i}.{rel}" for i in segment.layers), True
    return (".".join(names),), False


def abstract_model(config: Qwen3Config, *, dtype: DType, param_dtype: DType) -> Qwen3ForCausalLM:
    """The model with ShapeDtypeStruct leaves: no memory allocated."""
    return nnx.eval_shape(lambda: Qwen3ForCausalLM(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def canonical_shapes(config: Qwen3Config) -> dict[str, tuple[int, ...]]:
    """Every canonical key of `config` with its (unstacked) shape, in model-definition order."""
    shapes: dict[str, tuple[int, ...]] = {}
    state = nnx.state(abstract_model(config, dtype=jnp.float32, param_dtype=jnp.float32), nnx.Param)
    for path, var in nnx.to_flat_state(state):
        keys, stacked = _leaf_keys(config, path)
        shape = tuple(var.get_value().shape)
        for key in keys:
            shapes[key] = shape[1:] if stacked else shape
    return shapes


def write_group(key: str) -> str:
    """The unit a checkpoint is written in: one decoder layer ("layers.{i}"), or one global array (its key)."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" else key


def assemble(config: Qwen3Config, read: ReadFn, *, dtype: DType, param_dtype: DType, mesh: Mesh | None = None
             ) -> Qwen3ForCausalLM:
    """Builds the model leaf by leaf from `read`, never holding more than the model plus one leaf's inputs.

    Each leaf is placed on `mesh` by kinetics_jax.sharding.axes.RULES (default: this process's first device)."""
    model = abstract_model(config, dtype=dtype, param_dtype=param_dtype)
    if mesh is not None:
        meshes.check_mesh(config, mesh)
        shardings = placement.param_shardings(model, mesh)
    graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for path, var in flat:
        shape, leaf_dtype = var.get_value().shape, var.get_value().dtype
        target = jax.ShapeDtypeStruct(shape, leaf_dtype, sharding=local if mesh is None else shardings[path])
        keys, stacked = _leaf_keys(config, path)
        value = read(keys, target, stacked)
        if (value.shape != target.shape or value.dtype != target.dtype
                or not value.sharding.is_equivalent_to(target.sharding, len(shape))):
            raise AssertionError(f"reader returned {value.shape}/{value.dtype}/{value.sharding} for {path}, "
                                 f"expected {target.shape}/{target.dtype}/{target.sharding}")
        var.set_value(value)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def iter_canonical(model: Qwen3ForCausalLM) -> Iterator[tuple[str, jax.Array]]:
    """(canonical key, unstacked array) for every parameter of an in-memory model."""
    config = model.config
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        keys, stacked = _leaf_keys(config, path)
        value = var.get_value()
        if stacked:
            for j, key in enumerate(keys):
                yield key, value[j]
        else:
            yield keys[0], value
