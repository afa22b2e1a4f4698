"""Data parallelism over every device of the run: a 1-D 'data' mesh and a sharded `jax.jit`.

State is replicated, the batch is split on its leading axis. Under jit, BatchNorm sees the global
batch and gradients are reduced by XLA, so one step on N devices computes what one device would.
In a multi-process run (fer_jax.distributed) the mesh spans every process's devices, and every
process holds the same host arrays: placing them asks each process only for the slices its own
devices hold (`jax.make_array_from_callback`), so no process builds another's part of a batch.
"""
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fer_jax import FerJaxError


def make_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ('data',))


def check_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    across = (f'{devices} devices ({jax.process_count()} processes)' if jax.process_count() > 1
              else f'{devices} devices')
    raise FerJaxError(f'{field}={batch_size} does not divide across {across}; set it to a '
                      f'multiple of {devices}.')


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def _place(tree: Any, sharding: NamedSharding) -> Any:
  """Host (or already placed) values as global arrays with `sharding`; each process supplies the
  slices of its own devices from its copy."""
  def place(leaf):
    if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
      # Same placement; re-labelled with the mesh when it lacks it (a one-device array), since jit
      # takes the two for different input types and would compile its function a second time.
      return leaf if leaf.sharding == sharding else jax.device_put(leaf, sharding)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree_util.tree_map(place, tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  return _place(batch, batch_sharded(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return _place(tree, replicated(mesh))


def data_parallel(step_fn: Callable, mesh: Mesh, donate_state: bool = True) -> Callable:
  """jit `step_fn(state, batch)` with replicated state and outputs and a sharded batch."""
  return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=replicated(mesh),
                 donate_argnums=(0,) if donate_state else ())
