"""Process start-up of a multi-host run: jax.distributed, the writing process, and process 0's values.

    kj.sharding.initialize()   # once, before anything touches a device; a no-op in a single-process run

Everything here is public jax (jax.distributed.initialize, jax.process_index / process_count,
jax.experimental.multihost_utils) but one question: whether jax.distributed's auto-detection recognises the
environment. jax answers it only privately (see `_cluster_detected`), and calling jax.distributed.initialize()
outside a cluster raises a ValueError that cannot be told apart from a misconfigured cluster.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def _cluster_detected() -> bool:
    """Whether jax.distributed's auto-detection recognises the environment (TPU pod, SLURM, Open MPI, k8s)."""
    # Private API, on purpose: jax (0.10) has no public "is a cluster present" query; jax.distributed.initialize()
    # consults this registry itself, and without a cluster raises a ValueError that a broken cluster also raises.
    try:
        from jax._src import clusters
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
    return np.asarray(multihost_utils.broadcast_one_to_all(value))
