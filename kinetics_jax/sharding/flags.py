"""absl flags for pod runs, shared by the scripts that run a model (generate.py, evaluate.py):

    --mesh_shape=4,2                       # data,model (default: every device on "data")
    --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0   # explicit multi-process start

Call `define_flags()` at import time of a script and `mesh_from_flags()` first thing in main: it starts
jax.distributed (explicitly from the flags, or auto-detected on a TPU pod / SLURM / Open MPI / k8s cluster), logs
this process's index and the process count, and builds the mesh. A bad combination raises ValueError naming
the flag.
"""

from __future__ import annotations

import jax
from absl import flags, logging
from jax.sharding import Mesh

from kinetics_jax.sharding import meshes, runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("mesh_shape", "", "Devices on the 'data' and 'model' mesh axes, 'data,model' "
                        "(default: every device on 'data').")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for an explicit multi-process "
                        "start (omit on TPU pods and SLURM / Open MPI / k8s jobs: auto-detected).")
    flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator_address).",
                         lower_bound=1)
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).",
                         lower_bound=0)


def mesh_from_flags() -> Mesh:
    """Starts jax.distributed when the flags or the environment ask for it, then the mesh the flags describe."""
    shape = meshes.parse_mesh_shape(FLAGS.mesh_shape)  # check before starting anything
    runtime.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    logging.info("process %d of %d, backend %s, %d devices", jax.process_index(), jax.process_count(),
                 jax.default_backend(), jax.device_count())
    mesh = meshes.make_mesh(shape)
    logging.info("mesh %s", dict(mesh.shape))
    return mesh
