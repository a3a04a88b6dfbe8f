"""Pods: the device mesh, the logical-axis rules, and jax.distributed start-up.

    kj.distributed.initialize()                      # multi-host: once, before anything touches a device
    mesh = kj.distributed.make_mesh((4, 2))          # ("data", "model"); default: every device on "data"
    model = kj.load_model(path, dtype=jnp.bfloat16, mesh=mesh)   # each process reads only its own shards
    result = kj.generate(model, prompts, num_samples=32, max_new_tokens=32768, mesh=mesh)

Every parameter carries logical axis names (model/layers.py); the KV cache and the decode batch have theirs
here. One table, `RULES`, maps logical names to the mesh axes (the MaxText scheme):

- "model" (tensor parallel): attention heads (query and KV), the MLP hidden units, the MoE experts and the
  vocabulary are split over it. The KV cache is split by KV head, so a device holds the pages of its heads only.
- "data" (data parallel): the decode rows (prompts x samples) and the cache pages. A request is cut into
  `DataSplit.shards` equal sub-requests, each with its own prompts (their shared prompt pages stored on that
  shard) and its own samples, so no page is ever read across devices.

A dimension that the table maps to an axis is split only if the axis size divides it; otherwise it is
replicated (e.g. a vocabulary of 160 over 3 devices, or 4 KV-head projections over 16 devices). The decode
kernels run per shard (`per_shard`, a shard_map), so `check_mesh` requires the "model" size to divide the query
heads, and to divide the KV heads or be a multiple of them; in the second case the cache keeps one copy of a
KV head per device that reads it (`kv_replicas`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from kinetics_jax.attention.policies import AttentionConfig
from kinetics_jax.cache import CachePlan
from kinetics_jax.config import Qwen3Config
from kinetics_jax.model.layers import EMBED, EXPERTS, HEAD_DIM, HEADS, KV_HEADS, LAYERS, MLP, VOCAB

DATA, MODEL = "data", "model"
MESH_AXES = (DATA, MODEL)

# Logical axes of activations and the KV cache (the parameters' names are in model/layers.py).
BATCH = "batch"              # decode rows (prompt x sample), or prompts in prefill
CACHE_PAGES = "cache_pages"  # the page pool
PAGE_SLOTS = "page_slots"    # tokens within a page
LENGTH = "length"            # sequence positions

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
    (LENGTH, None),
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
    raise KeyError(f"logical axis {logical!r} has no entry in kinetics_jax.distributed.RULES")


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


def check_mesh(config: Qwen3Config, mesh: Mesh) -> None:
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
    """Inside `per_shard`: the mean over a KV head's whole query group of per-device means x [B, 1, D] over the
    device's own query heads, when the group is spread over `replicas` devices (one all-gather of B x D floats
    per call; block selection needs it so every copy of a KV head chooses the blocks one device would)."""
    if replicas == 1:
        return x
    gathered = jax.lax.all_gather(x, MODEL)  # [model, B, 1, D]; devices i*r .. i*r + r - 1 share KV head i
    copies = gathered.reshape((gathered.shape[0] // replicas, replicas) + x.shape)
    return jnp.mean(copies[jax.lax.axis_index(MODEL) // replicas], axis=0)


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


def platform(mesh: Mesh | None) -> str:
    """The platform a program for `mesh` is built for ("cpu", "gpu", "tpu"): its devices' (compile-only
    topology devices included), or jax's default backend without a mesh."""
    if mesh is None:
        return jax.default_backend()
    return mesh.devices.flat[0].platform


def local_mesh() -> Mesh:
    """A 1 x 1 mesh on this process's first device: the single-device default."""
    return make_mesh((1, 1), jax.local_devices()[:1])


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


@dataclasses.dataclass(frozen=True)
class DataSplit:
    """How a request of P prompts x N samples is cut over `shards` data shards.

    Shard d = i * sample_groups + j decodes prompts i * prompts_per_shard ... (+ prompts_per_shard) and samples
    j * samples_per_shard ... of each: prompts are spread first (no prompt stored twice), then samples (the
    prompt's pages are then stored on each shard holding some of its samples). P is padded up to
    prompt_groups * prompts_per_shard by repeating the last prompt; padded rows are dropped from the result.
    """

    shards: int
    prompt_groups: int
    sample_groups: int
    prompts_per_shard: int
    samples_per_shard: int

    @classmethod
    def of(cls, num_prompts: int, num_samples: int, shards: int) -> "DataSplit":
        prompt_groups = math.gcd(num_prompts, shards)
        sample_groups = math.gcd(num_samples, shards // prompt_groups)
        prompt_groups = shards // sample_groups  # may exceed gcd(P, shards): then P is padded
        return cls(shards, prompt_groups, sample_groups, -(-num_prompts // prompt_groups),
                   num_samples // sample_groups)

    def pad(self, prompts: Sequence[Any]) -> list[Any]:
        """Per-prompt items padded to prompt_groups * prompts_per_shard by repeating the last one."""
        return list(prompts) + [prompts[-1]] * (self.prompt_groups * self.prompts_per_shard - len(prompts))

    def shard_rows(self, d: int) -> tuple[range, range]:
        """(prompt indices (padded), sample indices) of shard d."""
        i, j = divmod(d, self.sample_groups)
        return (range(i * self.prompts_per_shard, (i + 1) * self.prompts_per_shard),
                range(j * self.samples_per_shard, (j + 1) * self.samples_per_shard))


def request_plans(prompt_lengths: Sequence[int], num_samples: int, max_new_tokens: int, attention: AttentionConfig,
                  data_shards: int) -> tuple[DataSplit, list[CachePlan]]:
    """The data split of a request and each shard's cache plan (local page ids, pools rounded to 64 pages)."""
    split = DataSplit.of(len(prompt_lengths), num_samples, data_shards)
    padded = split.pad(prompt_lengths)
    plans = [CachePlan.for_request([padded[i] for i in split.shard_rows(d)[0]], split.samples_per_shard,
                                   max_new_tokens, attention.block_size, page_offset=attention.page_offset,
                                   pad_pages_to=64) for d in range(split.shards)]
    return split, plans


def cache_pages_per_shard(prompt_lengths: Sequence[int], num_samples: int, max_new_tokens: int,
                          attention: AttentionConfig, data_shards: int) -> int:
    """The pool size (pages) of each data shard's cache, as request_plans plans it, in closed form: O(prompts),
    nothing per sample (CachePlan.pool_pages per prompt group; every shard is sized like the largest), so an
    absurd request is sized, and refused, at once."""
    split = DataSplit.of(len(prompt_lengths), num_samples, data_shards)
    padded = split.pad(list(prompt_lengths))
    return max(CachePlan.pool_pages([padded[i] for i in split.shard_rows(g * split.sample_groups)[0]],
                                    split.samples_per_shard, max_new_tokens, attention.block_size,
                                    page_offset=attention.page_offset, pad_pages_to=64)
               for g in range(split.prompt_groups))


def kv_cache_bytes_per_device(pages: int, config: Qwen3Config, dtype: Any, attention: AttentionConfig,
                              mesh: Mesh | AbstractMesh) -> int:
    """Bytes of KV cache each device holds for a pool of `pages` pages per data shard (cache_pages_per_shard):
    K, V and the policy's page summaries (CachePlan.pool_bytes), its KV heads split over "model" (with their
    copies, see kv_replicas)."""
    pool = CachePlan.pool_bytes(pages, attention.block_size, config, dtype, len(attention.summaries))
    return pool * kv_replicas(config, mesh) // mesh.shape[MODEL]


def param_bytes_per_device(model: nnx.Module, mesh: Mesh | AbstractMesh) -> int:
    """Bytes of parameters each device holds under RULES (model real or abstract, e.g. layout.abstract_model)."""
    total = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        value = var.get_value()
        spec = partition_spec(param_axes(var), mesh, value.shape)
        split = math.prod(mesh.shape[axis] for axis in spec if axis is not None)
        total += math.prod(value.shape) * np.dtype(value.dtype).itemsize // split
    return total


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
    """Bytes one device holds for a request on a mesh (activations and XLA workspace come on top)."""

    params: int
    kv_cache: int
    kv_replicas: int


def memory_per_device(config: Qwen3Config, mesh_shape: tuple[int, int], *, prompt_lengths: Sequence[int],
                      num_samples: int, max_new_tokens: int, attention: AttentionConfig, dtype: Any
                      ) -> DeviceMemory:
    """What `generate` would place on each device of a (data, model) mesh, with no device involved: the
    parameters split by RULES and the KV cache it sizes (the same arithmetic, O(prompts)). Raises ValueError for a mesh the
    heads do not allow (check_mesh)."""
    from kinetics_jax.checkpoint import layout  # checkpoint imports this module

    mesh = AbstractMesh(tuple(mesh_shape), MESH_AXES)
    check_mesh(config, mesh)
    pages = cache_pages_per_shard(prompt_lengths, num_samples, max_new_tokens, attention, mesh_shape[0])
    model = layout.abstract_model(config, dtype=dtype, param_dtype=dtype)
    return DeviceMemory(param_bytes_per_device(model, mesh),
                        kv_cache_bytes_per_device(pages, config, dtype, attention, mesh), kv_replicas(config, mesh))


def _cluster_detected() -> bool:
    """Whether jax.distributed's auto-detection recognises the environment (TPU pod, SLURM, Open MPI, k8s)."""
    try:
        from jax._src import clusters  # the registry jax.distributed.initialize() itself consults
        return any(c.is_env_present() for c in clusters.ClusterEnv._cluster_types)
    except (ImportError, AttributeError):  # pragma: no cover - private API moved: rely on explicit flags
        return False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Starts jax.distributed, before any device is touched.

    With a coordinator address ("host:port"), num_processes and process_id are required (explicit start, e.g.
    several processes on one machine or a launcher jax does not know). Without one, a cluster environment jax
    recognises (Cloud TPU pod slice, SLURM, Open MPI, Kubernetes) is auto-detected; anywhere else this is a
    single-process run and nothing happens. On CPU the collectives go through gloo.
    """
    explicit = coordinator_address is not None
    if not explicit and (num_processes is not None or process_id is not None):
        raise ValueError("--num_processes / --process_id need --coordinator_address")
    if explicit and (num_processes is None or process_id is None):
        raise ValueError("--coordinator_address needs --num_processes and --process_id")
    if explicit and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    if not explicit and not _cluster_detected():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only; GPU / TPU ignore it
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def is_writer() -> bool:
    """Only process 0 writes results and checkpoints."""
    return jax.process_index() == 0


def broadcast(value: np.ndarray) -> np.ndarray:
    """Process 0's `value` on every process (identity in a single-process run)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(value))
