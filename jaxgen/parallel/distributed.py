"""Multi-host wiring: ``jax.distributed`` start-up, global input arrays, and gathering outputs to process 0.

Every process runs the same program on the same prompts (SPMD); the mesh spans all processes' devices; each
process feeds only its addressable shards; only process 0 writes anything.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax import Array


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Start ``jax.distributed`` once. With no arguments JAX detects the cluster (TPU pods, SLURM, Open MPI);
    otherwise pass what ``jax.distributed.initialize`` takes (also read from ``JAXGEN_COORDINATOR``,
    ``JAXGEN_NUM_PROCESSES``, ``JAXGEN_PROCESS_ID``)."""
    coordinator_address = coordinator_address or os.environ.get("JAXGEN_COORDINATOR")
    if num_processes is None and "JAXGEN_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAXGEN_NUM_PROCESSES"])
    if process_id is None and "JAXGEN_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAXGEN_PROCESS_ID"])
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def is_main_process() -> bool:
    """True on the process that prints and writes results (process 0)."""
    return jax.process_index() == 0


def global_array(host: np.ndarray, sharding: jax.sharding.Sharding) -> Array:
    """A global array from the same host value on every process; each process supplies its addressable shards."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def fetch(tree: Any) -> Any:
    """Numpy copies of every array in ``tree``, gathered from all processes when the arrays span several."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x) if isinstance(x, jax.Array) else x

    return jax.tree_util.tree_map(get, tree)
