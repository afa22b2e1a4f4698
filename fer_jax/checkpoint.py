"""Orbax checkpoints in the workdir: `checkpoints/latest` every epoch, `checkpoints/best` by
validation accuracy. Each holds the train state and, as JSON, everything needed to resume or to
serve the model without the config file: epoch, early-stopping state, history, configs, label map.
"""
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

LATEST, BEST = 'latest', 'best'


def _manager(workdir: str, kind: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints', kind),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


class Checkpoints:
  """The two managers of one workdir."""

  def __init__(self, workdir: str):
    self.managers = {LATEST: _manager(workdir, LATEST), BEST: _manager(workdir, BEST)}

  def save(self, kind: str, step: int, state_tree: Any, meta: dict[str, Any]) -> None:
    self.managers[kind].save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(meta)))

  def latest_step(self, kind: str = LATEST) -> int | None:
    return self.managers[kind].latest_step()

  def restore(self, kind: str, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(state tree shaped like `target`, metadata) of the given or newest step."""
    manager = self.managers[kind]
    step = manager.latest_step() if step is None else step
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def restore_meta(self, kind: str, step: int | None = None) -> dict[str, Any]:
    manager = self.managers[kind]
    step = manager.latest_step() if step is None else step
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def wait(self) -> None:
    for manager in self.managers.values():
      manager.wait_until_finished()

  def close(self) -> None:
    for manager in self.managers.values():
      manager.close()


def load_for_inference(workdir: str, which: str = BEST) -> tuple[dict[str, Any], dict[str, Any]]:
  """({'params', 'batch_stats'} as numpy, metadata) from a workdir's best, latest or a step.

  Restores without a target, so no optimiser has to be rebuilt to read a model. Runs with an
  exponential moving average of the weights give the averaged params.
  """
  from fer_jax import FerJaxError
  if which in (BEST, LATEST):
    kind, step = which, None
  elif str(which).isdigit():
    kind, step = LATEST, int(which)
  else:
    raise FerJaxError(f'checkpoint {which!r} is not "best", "latest" or a step number.')
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints', kind)
  if not os.path.isdir(directory):
    raise FerJaxError(f'{workdir} has no checkpoints ({directory} is missing); train first with '
                      f'python -m fer_jax.main --config configs/enhanced.py --workdir {workdir}.')
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  steps = manager.all_steps()
  if not steps or (step is not None and step not in steps):
    raise FerJaxError(f'{directory} has no checkpoint {step if step is not None else ""}'.strip()
                      + f' (steps there: {sorted(steps) or "none"}); pick one of those.')
  restored = manager.restore(step if step is not None else manager.latest_step(),
                             args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                     meta=ocp.args.JsonRestore()))
  manager.close()
  state = restored.state
  # A run with config.ema_decay evaluated (and re-measured BatchNorm for) the averaged params.
  params = state.get('ema_params', state['params'])
  return {'params': params, 'batch_stats': state['batch_stats']}, restored.meta
