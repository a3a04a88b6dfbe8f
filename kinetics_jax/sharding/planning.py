"""Planning a request on a mesh from arithmetic alone: how its prompts and samples are cut over the data shards
(`DataSplit`), each shard's cache plan, and the bytes each device holds (`memory_per_device`).

A request is cut into `DataSplit.shards` equal sub-requests, each with its own prompts (their shared prompt
pages stored on that shard) and its own samples, so no page is ever read across devices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh

from kinetics_jax.policies import AttentionConfig
from kinetics_jax.cache import CachePlan, PagedLayout
from kinetics_jax.checkpoint import layout
from kinetics_jax.config import Qwen3Config
from kinetics_jax.sharding.axes import MESH_AXES, MODEL, partition_spec
from kinetics_jax.sharding.meshes import check_mesh, kv_replicas
from kinetics_jax.sharding.placement import param_axes


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
    layout = PagedLayout.of(attention)
    plans = [layout.plan([padded[i] for i in split.shard_rows(d)[0]], split.samples_per_shard, max_new_tokens,
                         pad_pages_to=64) for d in range(split.shards)]
    return split, plans


def cache_pages_per_shard(prompt_lengths: Sequence[int], num_samples: int, max_new_tokens: int,
                          attention: AttentionConfig, data_shards: int) -> int:
    """The pool size (pages) of each data shard's cache, as request_plans plans it, in closed form: O(prompts),
    nothing per sample (PagedLayout.pool_pages per prompt group; every shard is sized like the largest), so an
    absurd request is sized, and refused, at once."""
    split = DataSplit.of(len(prompt_lengths), num_samples, data_shards)
    padded = split.pad(list(prompt_lengths))
    layout = PagedLayout.of(attention)
    return max(layout.pool_pages([padded[i] for i in split.shard_rows(g * split.sample_groups)[0]],
                                 split.samples_per_shard, max_new_tokens, pad_pages_to=64)
               for g in range(split.prompt_groups))


def kv_cache_bytes_per_device(pages: int, config: Qwen3Config, dtype: Any, attention: AttentionConfig,
                              mesh: Mesh | AbstractMesh) -> int:
    """Bytes of KV cache each device holds for a pool of `pages` pages per data shard (cache_pages_per_shard):
    K, V and the policy's page summaries (PagedLayout.pool_bytes), its KV heads split over "model" (with their
    copies, see meshes.kv_replicas)."""
    layout = PagedLayout.of(attention, kv_replicas(config, mesh))
    return layout.pool_bytes(config, pages, dtype) // mesh.shape[MODEL]


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
    parameters split by RULES and the KV cache it sizes (the same arithmetic, O(prompts)). Raises ValueError for
    a mesh the heads do not allow (check_mesh)."""
    mesh = AbstractMesh(tuple(mesh_shape), MESH_AXES)
    check_mesh(config, mesh)
    pages = cache_pages_per_shard(prompt_lengths, num_samples, max_new_tokens, attention, mesh_shape[0])
    model = layout.abstract_model(config, dtype=dtype, param_dtype=dtype)
    return DeviceMemory(param_bytes_per_device(model, mesh),
                        kv_cache_bytes_per_device(pages, config, dtype, attention, mesh), kv_replicas(config, mesh))
