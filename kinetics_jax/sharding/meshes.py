"""("data", "model") meshes, the meshes the attention heads allow, and the KV-head copies a large "model" needs.

The decode kernels run per shard (placement.per_shard), so `check_mesh` requires the "model" size to divide the
query heads, and to divide the KV heads or be a multiple of them; in the second case the cache keeps one copy of
a KV head per device that reads it (`kv_replicas`), and block selection completes its query-group means across
those devices (`kv_head_mean`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh

from kinetics_jax.config import Qwen3Config
from kinetics_jax.sharding.axes import MESH_AXES, MODEL


def parse_mesh_shape(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """"4,2" -> (4, 2) (data, model); "" or None -> None (every device on "data")."""
    if text is None or text == "" or text == []:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"mesh shape must be two integers 'data,model', got {text!r}") from None
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"mesh shape must be two integers >= 1 'data,model', got {text!r}")
    return shape  # type: ignore[return-value]


def make_mesh(shape: tuple[int, int] | str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: every device of every process). shape None: all on
    "data". The product must equal the number of devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = parse_mesh_shape(shape) or (len(devices), 1)
    if shape[0] * shape[1] != len(devices):
        raise ValueError(f"mesh shape {shape[0]},{shape[1]} (data,model) needs {shape[0] * shape[1]} devices, "
                         f"but there are {len(devices)}")
    auto = (jax.sharding.AxisType.Auto,) * 2
    if len(devices) == jax.device_count():  # topology-aware device order (ICI rings on TPU)
        return jax.make_mesh(shape, MESH_AXES, auto)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def local_mesh() -> Mesh:
    """A 1 x 1 mesh on this process's first device: the single-device default."""
    return make_mesh((1, 1), jax.local_devices()[:1])


def platform(mesh: Mesh | None) -> str:
    """The platform a program for `mesh` is built for ("cpu", "gpu", "tpu"): its devices' (compile-only
    topology devices included), or jax's default backend without a mesh."""
    if mesh is None:
        return jax.default_backend()
    return mesh.devices.flat[0].platform


def check_mesh(config: Qwen3Config, mesh: Mesh | AbstractMesh) -> None:
    """Refuses a mesh the attention cannot be split over: "model" must divide the query heads, and either divide
    the KV heads or be a multiple of them (then each KV head is replicated, see `kv_replicas`)."""
    if tuple(mesh.axis_names) != MESH_AXES:
        raise ValueError(f"mesh axes must be {MESH_AXES}, got {tuple(mesh.axis_names)}")
    m, hq, hkv = mesh.shape[MODEL], config.num_attention_heads, config.num_key_value_heads
    if hq % m or (hkv % m and m % hkv):
        raise ValueError(f"the 'model' mesh axis ({m} devices) must divide the query heads ({hq}) and either "
                         f"divide the KV heads ({hkv}) or be a multiple of them; choose --mesh_shape with such a "
                         f"'model' size and put the other devices on 'data'")


def kv_replicas(config: Qwen3Config, mesh: Mesh | AbstractMesh | None) -> int:
    """Copies of each KV head in the cache: 1 when "model" divides the KV heads; model / kv_heads when "model"
    is larger (e.g. 4 KV heads over 16 devices: every device still holds the pages of exactly one KV head, the
    one its query heads read, like tensor-parallel serving engines do)."""
    if mesh is None:
        return 1
    return max(mesh.shape[MODEL] // config.num_key_value_heads, 1)


def kv_head_mean(x: jax.Array, replicas: int) -> jax.Array:
    """Inside `placement.per_shard`: the mean over a KV head's whole query group of per-device means x [B, 1, D]
    over the device's own query heads, when the group is spread over `replicas` devices (one all-gather of B x D
    floats per call; block selection needs it so every copy of a KV head chooses the blocks one device would)."""
    if replicas == 1:
        return x
    gathered = jax.lax.all_gather(x, MODEL)  # [model, B, 1, D]; devices i*r .. i*r + r - 1 share KV head i
    copies = gathered.reshape((gathered.shape[0] // replicas, replicas) + x.shape)
    return jnp.mean(copies[jax.lax.axis_index(MODEL) // replicas], axis=0)
