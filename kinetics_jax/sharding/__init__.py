"""Pods: logical axes, meshes, placement on them, request planning, and multi-host start-up.

    kj.sharding.initialize()                         # multi-host: once, before anything touches a device
    mesh = kj.sharding.make_mesh((4, 2))             # ("data", "model"); default: every device on "data"
    model = kj.load_model(path, dtype=jnp.bfloat16, mesh=mesh)   # each process reads only its own shards
    result = kj.generate(model, prompts, num_samples=32, max_new_tokens=32768, mesh=mesh)

Modules:
- `axes`: every logical axis name (parameters', KV cache's, activations'), the one table `RULES` mapping them to
  the mesh axes "data" and "model", and the PartitionSpecs it gives.
- `meshes`: ("data", "model") meshes, the meshes the attention heads allow (`check_mesh`), and the KV-head
  copies a "model" axis larger than the KV heads needs (`kv_replicas`, the `kv_head_mean` collective).
- `placement`: shardings by logical axes, parameter placement (`shard_model`, `place_params`), host arrays as
  global arrays (`put`), sharding constraints, and functions run per shard (`per_shard`).
- `planning`: a request cut over the data shards (`DataSplit`), each shard's cache plan, and the bytes each
  device holds (`memory_per_device`), from arithmetic alone. Import it as a module
  (`from kinetics_jax.sharding import planning`): it depends on the model, whose layers take their axis names
  from `axes`, so this package does not import it.
- `runtime`: process start-up (`initialize`), the writing process (`is_writer`), process 0's values
  (`broadcast`).
- `flags`: the scripts' pod flags (--mesh_shape, --coordinator_address, ...) and the mesh they describe.
"""

from kinetics_jax.sharding import axes, meshes, placement, runtime
from kinetics_jax.sharding.meshes import local_mesh, make_mesh, parse_mesh_shape
from kinetics_jax.sharding.placement import shard_model
from kinetics_jax.sharding.runtime import broadcast, initialize, is_writer

__all__ = ["axes", "broadcast", "initialize", "is_writer", "local_mesh", "make_mesh", "meshes",
           "parse_mesh_shape", "placement", "runtime", "shard_model"]
