"""Orbax checkpoints in the workdir: `checkpoints/best` (by validation accuracy) and
`checkpoints/latest`. Each holds the train state and, as JSON, everything needed to resume or to
serve the model without the config file: the run state (fer_jax.run_state), configs, label map.

An epoch saves its best checkpoint first and waits for it to be committed before it saves the
latest, so a run killed at any moment resumes from a latest that is never ahead of its best. Older
best steps are pruned only once a latest save has made them obsolete, so the run's best epoch as
of its latest checkpoint is always on disk. A resumed run replays the epochs after its latest
checkpoint, and may replay them differently (a resume may change num_epochs, learning rates and
other fields that do not shape the state): best steps ahead of the latest are dropped when it
resumes and written again by the replay, never inherited. Orbax writes each step to a temporary
folder and renames it when complete; the writer's managers remove temporary folders left by a
killed run.
"""
import contextlib
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from fer_jax import FerJaxError, cli

LATEST, BEST = 'latest', 'best'
LOCK_FILE = '.lock'


def _manager(workdir: str, kind: str) -> ocp.CheckpointManager:
  """`latest` keeps one step; `best` is pruned by Checkpoints.save_epoch (module docstring)."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints', kind),
      options=ocp.CheckpointManagerOptions(max_to_keep=1 if kind == LATEST else None, create=True,
                                           cleanup_tmp_directories=True))


def _free_mib(path: str) -> float:
  try:
    return shutil.disk_usage(path).free / 2**20
  except OSError:
    return float('nan')


def _mib(tree: Any) -> float:
  return sum(getattr(leaf, 'nbytes', 0) for leaf in jax.tree_util.tree_leaves(tree)) / 2**20


class CheckpointWriteError(FerJaxError):
  """A checkpoint that could not be written; train_and_evaluate adds what was saved before."""


def _write_failure(error: Exception) -> str:
  """The cause of a failed Orbax write in a few words: the operating system's reason when the
  message holds one (tensorstore puts it after a page of spec), else the error's first words."""
  text = ' '.join(str(error).split())
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    return os.strerror(int(code.group(1)))
  return f'{type(error).__name__}: {text[:160]}' if text else type(error).__name__


@contextlib.contextmanager
def _stderr_held() -> Any:
  """Holds what Orbax's threads print while a save runs (a failed write prints a traceback per
  thread): given back when the save succeeds, dropped when it fails, whose one sentence says it."""
  sys.stderr.flush()
  saved_fd = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved_fd, 2)
      raise
    else:
      sys.stderr.flush()
      os.dup2(saved_fd, 2)
      held.seek(0)
      sys.stderr.write(held.read().decode(errors='replace'))
    finally:
      os.close(saved_fd)


class Checkpoints:
  """The two managers of one workdir, for the process that trains in it (see WorkdirLock)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.managers = {LATEST: _manager(workdir, LATEST), BEST: _manager(workdir, BEST)}

  def check_room(self, state_tree: Any, copies: int, what: str) -> None:
    """Fails before the work when the disk cannot hold `copies` more checkpoints of this state
    (Orbax meets a full disk in background threads, with pages of tracebacks)."""
    needed, free = copies * _mib(state_tree) + 16, _free_mib(self.workdir)
    if free < needed:
      raise CheckpointWriteError(
          f'no room for {what}: about {needed:.0f} MiB needed in '
          f'{os.path.join(self.workdir, "checkpoints")}, which has {free:.0f} MiB free; free some '
          'space there.')

  def check_room_for_run(self, state_tree: Any, epochs_left: int, every: int = 1) -> None:
    """Before training: room for the most checkpoints the run can hold at once, a latest saved
    every `every` epochs. Best steps are pruned only when a latest is saved (module docstring),
    so at the peak of that save the previous best and latest, a best for each epoch since, and
    the new latest exist: every + 3 copies (4 when every epoch saves a latest)."""
    kept = len(self.managers[LATEST].all_steps()) + len(self.managers[BEST].all_steps())
    window = min(every, epochs_left)
    peak = max(kept + window + 1, every + 3 if epochs_left > every else 0)
    if peak > kept:
      self.check_room(state_tree, peak - kept,
                      f"this model's checkpoints ({peak} copies of {_mib(state_tree):.0f} MiB at "
                      'the peak of a save: the latest and best kept, the bests of the epochs '
                      'since, and the next latest, written before the older ones are removed)')

  def save(self, kind: str, step: int, state_tree: Any, meta: dict[str, Any]) -> None:
    """Saves and waits until the step is committed; a step already there is written anew."""
    manager = self.managers[kind]
    if step in manager.all_steps():
      manager.delete(step)
    self.check_room(state_tree, 1, f'the {kind} checkpoint (step {step})')
    try:
      with _stderr_held():
        try:
          saved = manager.save(step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(meta)))
          manager.wait_until_finished()
        except Exception:
          self.close()  # Orbax's threads end (and print) while their output is held
          time.sleep(2.0)  # tensorstore's last callbacks run after close returns
          raise
    except Exception as e:  # Orbax surfaces a full or vanished disk as assorted errors
      raise CheckpointWriteError(
          f'could not write the {kind} checkpoint (step {step}) to {manager.directory}: '
          f'{_write_failure(e)} ({_free_mib(self.workdir):.0f} MiB free there); free some space '
          'or fix the folder.') from None
    if not saved and step not in manager.all_steps():
      raise FerJaxError(f'Orbax did not save the {kind} checkpoint (step {step}) in '
                        f'{manager.directory}, whose steps are {manager.all_steps()}; use a new '
                        '--workdir, or remove that folder to start over.')

  def save_epoch(self, step: int, state_tree: Any, meta: dict[str, Any], best: bool,
                 latest: bool, best_step: int | None) -> None:
    """The best checkpoint first, then the latest, then the best steps other than the run's best
    `best_step` are removed (module docstring)."""
    if best:
      self.save(BEST, step, state_tree, meta)
    if latest:
      self.save(LATEST, step, state_tree, meta)
      for old in self.managers[BEST].all_steps():
        if old != best_step:
          self.managers[BEST].delete(old)

  def drop_replayed(self) -> None:
    """Best steps ahead of the latest checkpoint (all of them when there is none): the resumed
    run replays those epochs."""
    latest = self.latest_step(LATEST)
    for step in self.managers[BEST].all_steps():
      if latest is None or step > latest:
        self.managers[BEST].delete(step)

  def check_best(self, best_step: int | None, latest_tree: Any = None,
                 latest_meta: dict[str, Any] | None = None) -> None:
    """Makes sure `best` holds `best_step`, the run's best epoch. When it does not (a run stopped
    during that save) and the latest checkpoint is that same epoch, it is saved again from there."""
    saved_best, latest = self.latest_step(BEST), self.latest_step(LATEST)
    if best_step is None or saved_best == best_step:
      return
    if latest_tree is not None and latest == best_step:
      logging.warning('the best checkpoint (step %d) was not saved completely; saving it again '
                      'from the latest checkpoint, which is the same epoch', best_step)
      self.save(BEST, best_step, latest_tree, latest_meta)
      return
    raise FerJaxError(
        f'{self.managers[BEST].directory} holds step {saved_best}, but the run\'s best '
        f'epoch is step {best_step}, and no checkpoint of that step is left to restore it from; '
        'evaluate with --checkpoint latest, or train again in a new --workdir.')

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

  def close(self) -> None:
    """Ends the managers' threads; a manager whose save failed repeats its error here, which
    save has already reported."""
    for manager in self.managers.values():
      with contextlib.suppress(Exception):
        manager.close()


def committed_steps(workdir: str, kind: str) -> list[int]:
  """The steps of `kind` whose saves completed (Orbax renames a step's folder to its number last)."""
  folder = os.path.join(workdir, 'checkpoints', kind)
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(name) for name in names if name.isdigit())


def what_was_saved(workdir: str, steps: dict[str, list[int]], removed: bool) -> str:
  """For a run that stopped early: which checkpoint is there to go on from, and how."""
  if steps[LATEST]:
    return (f'the latest checkpoint (step {steps[LATEST][-1]}) is in {workdir}; rerun the same '
            'command to resume from it.')
  if steps[BEST]:
    return (f'only the best checkpoint (step {steps[BEST][-1]}) was saved in {workdir}, none to '
            'resume from yet; evaluate it with --checkpoint best, or rerun the same command to '
            'start again (which replaces it).')
  return ('nothing was saved before the first checkpoint'
          + (f', and the new workdir {workdir} was removed' if removed else '')
          + '; rerun the same command to start again.')


def remove_partial_steps(workdir: str) -> None:
  """Removes the temporary folders of saves cut short (Orbax writes a step into
  `<step>.orbax-checkpoint-tmp-*` and renames it when complete), so a stopped run does not hold
  the space its message may ask to free; the managers must be closed first."""
  for path in glob.glob(os.path.join(workdir, 'checkpoints', '*', '*.orbax-checkpoint-tmp*')):
    shutil.rmtree(path, ignore_errors=True)


def remove_workdir(workdir: str, attempts: int = 10) -> bool:
  """Removes a new workdir that holds no checkpoint; True once it is gone. A writer thread of
  a save cut short may still add a file while the tree is removed, so it tries again."""
  for _ in range(attempts):
    shutil.rmtree(workdir, ignore_errors=True)
    if not os.path.exists(workdir):
      return True
    time.sleep(0.2)
  return False


def settle_stopped_run(workdir: str, is_new: bool, primary: bool) -> str:
  """How the processes of a multi-process run that stopped together go on: from the latest
  checkpoint when one was saved. Process 0 owns the workdir and removes a new one that holds no
  checkpoint yet (the peer watch ends a process without unwinding, so train_and_evaluate cannot)."""
  every = 'start every process again with the same command'
  steps = {kind: committed_steps(workdir, kind) for kind in (LATEST, BEST)}
  if steps[LATEST]:
    return f'{every} to resume from the latest checkpoint in {workdir}.'
  if not primary:  # process 0's disk may be another host's
    return f'{every} to resume from the latest checkpoint in {workdir}, if one was saved.'
  if is_new and not steps[BEST] and remove_workdir(workdir):
    return (f'nothing was saved before the first checkpoint, and the new workdir {workdir} was '
            f'removed; {every} to start again.')
  return f'no checkpoint to resume from was saved in {workdir} yet; {every} to start again.'


def prepare_workdir(workdir: str) -> bool:
  """Creates the workdir and proves it writable before any data is read (fer_jax.cli); True when
  it is new, so a start that fails can remove it again."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise FerJaxError(f'--workdir={workdir} is a file, not a folder; pass a folder path.')
  created = not os.path.exists(workdir)
  cli.prepare_folder(workdir, '--workdir')
  return created


class WorkdirLock:
  """One training run per workdir. An advisory lock on `<workdir>/.lock` holding the process id:
  the kernel drops it when the process ends, however it ends, so a crashed run leaves nothing stuck."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.handle = None

  def __enter__(self) -> 'WorkdirLock':
    handle = open(self.path, 'a+')
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      handle.seek(0)
      owner = handle.read().strip() or 'unknown'
      handle.close()
      raise FerJaxError(f'{os.path.dirname(self.path)} is in use by another training run (process '
                        f'{owner}); wait for it to finish, stop it, or pass another --workdir.') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'{os.getpid()}\n')
    handle.flush()
    self.handle = handle
    return self

  def __exit__(self, *exc_info) -> None:
    fcntl.flock(self.handle, fcntl.LOCK_UN)
    self.handle.close()


def _restore_for_inference(directory: str, step: int | None) -> tuple[Any, int]:
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    steps = manager.all_steps()
    if not steps:
      raise FerJaxError(f'{directory} holds no checkpoint yet; if a run is training there, wait '
                        'for its first epoch to end.')
    if step is not None and step not in steps:
      raise FerJaxError(f'{directory} has no checkpoint {step} (steps there: {sorted(steps)}); '
                        'pick one of those.')
    chosen = step if step is not None else max(steps)
    return manager.restore(chosen, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())), chosen
  finally:
    manager.close()


def load_for_inference(workdir: str, which: str = BEST,
                       attempts: int = 5) -> tuple[dict[str, Any], dict[str, Any]]:
  """({'params', 'batch_stats'} as numpy, metadata) from a workdir's best, latest or a step.

  Restores without a target, so no optimiser has to be rebuilt to read a model. Runs with an
  exponential moving average of the weights give the averaged params. Safe while a run trains in
  the workdir: only committed steps are listed, and a step the writer replaces during the read is
  read again at the newer step.
  """
  if which in (BEST, LATEST):
    kind, step = which, None
  elif str(which).isdigit():
    kind, step = LATEST, int(which)
  else:
    raise FerJaxError(f'checkpoint {which!r} is not "best", "latest" or a step number.')
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints', kind)
  if not os.path.isdir(directory):
    raise FerJaxError(f'{workdir} has no checkpoints ({directory} is missing); train first with '
                      f'python -m fer_jax.main --config configs/quick.py --workdir {workdir}.')
  for attempt in range(attempts):
    try:
      restored, _ = _restore_for_inference(directory, step)
      break
    except FerJaxError:
      raise
    except Exception as e:  # the writer removed the step under us: read the newer one
      if step is not None or attempt == attempts - 1:
        raise FerJaxError(f'could not read the checkpoint in {directory} ({type(e).__name__}); '
                          'if a run is writing there, try again in a moment.') from None
      logging.warning('%s changed while it was read (a run is saving there); reading it again',
                      directory)
      time.sleep(0.2 * (attempt + 1))
  state = restored.state
  # A run with config.ema_decay evaluated (and re-measured BatchNorm for) the averaged params.
  params = state.get('ema_params', state['params'])
  return {'params': params, 'batch_stats': state['batch_stats']}, restored.meta


CALIBRATION_FILE = 'calibration.json'


def read_temperature(workdir: str, checkpoint: str) -> tuple[float, dict[str, float]]:
  """(temperature, {TTA variant: temperature}) that `evaluate --calibrate` fitted for this
  checkpoint of the workdir; (1, {}) when none was."""
  path = os.path.join(workdir, CALIBRATION_FILE)
  if not os.path.exists(path):
    return 1.0, {}
  with open(path) as f:
    stored = json.load(f).get(str(checkpoint), {})
  return float(stored.get('temperature', 1.0)), dict(stored.get('temperatures', {}))


def write_temperature(workdir: str, checkpoint: str, temperature: float, fitted_on: str,
                      temperatures: dict[str, float] | None = None) -> str:
  """Stores a checkpoint's temperature (and one per TTA variant) in the workdir's
  calibration.json, replaced whole so that a reader never sees half of it; returns its path."""
  path = os.path.join(workdir, CALIBRATION_FILE)
  stored = json.load(open(path)) if os.path.exists(path) else {}
  stored[str(checkpoint)] = {'temperature': temperature, 'temperatures': temperatures or {},
                             'fitted_on': fitted_on}
  with open(path + '.tmp', 'w') as f:
    json.dump(stored, f, indent=2)
  os.replace(path + '.tmp', path)
  return path
