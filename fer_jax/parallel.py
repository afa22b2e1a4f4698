"""Data parallelism over all local devices: a 1-D 'data' mesh and a sharded `jax.jit`.

State is replicated, the batch is split on its leading axis. Under jit, BatchNorm sees the global
batch and gradients are reduced by XLA, so one step on N devices computes what one device would.
"""
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fer_jax import FerJaxError

def make_mesh() -> Mesh:
  return Mesh(np.array(jax.local_devices()), ('data',))


def check_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise FerJaxError(f'{field}={batch_size} does not divide across {devices} devices; set it to a '
                      f'multiple of {devices}.')


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  return jax.device_put(batch, batch_sharded(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def data_parallel(step_fn: Callable, mesh: Mesh, donate_state: bool = True) -> Callable:
  """jit `step_fn(state, batch)` with replicated state and outputs and a sharded batch."""
  return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=replicated(mesh),
                 donate_argnums=(0,) if donate_state else ())
