"""What a run knows on the host between epochs, saved as one JSON item in every checkpoint.

The device state (params, BatchNorm statistics, optimiser, step, PRNG key) is the TrainState; the
rest of a run (the last finished epoch, the best score so far, the learning-rate factor of a
'plateau' schedule and the history of every epoch) lives here, so resuming restores it in one
piece and no field has rules of its own.
"""
import dataclasses
from typing import Any

from absl import logging
import ml_collections

from fer_jax import FerJaxError, config_checks
from fer_jax.checkpoint import LATEST, Checkpoints


@dataclasses.dataclass
class Tracker:
  """The best score seen and how many epochs have passed without beating it."""
  best_score: float = -1.0
  best_epoch: int = 0
  epochs_since_best: int = 0

  def update(self, epoch: int, score: float) -> bool:
    """Records an epoch's score; True when it is a new best."""
    if score > self.best_score:
      self.best_score, self.best_epoch, self.epochs_since_best = score, epoch, 0
      return True
    self.epochs_since_best += 1
    return False


@dataclasses.dataclass
class RunState:
  """Host-side state of a run. `best` picks the best checkpoint and stops early; `plateau` counts
  the epochs since the learning rate was last cut (lr_schedule='plateau') and `lr_scale` is the
  factor that cut left (also in the optimiser state, where the train step reads it)."""
  epoch: int = 0
  best: Tracker = dataclasses.field(default_factory=Tracker)
  plateau: Tracker = dataclasses.field(default_factory=Tracker)
  lr_scale: float = 1.0
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  @property
  def best_step(self) -> int | None:
    """The train step of the best epoch (what the best checkpoint holds), None before any epoch."""
    return self.history[self.best.best_epoch - 1]['step'] if self.best.best_epoch else None

  def should_stop(self, patience: int) -> bool:
    """Early stopping: `patience` epochs without a better score (0 = never)."""
    return patience > 0 and self.best.epochs_since_best >= patience

  def update_plateau(self, score: float, factor: float, patience: int, min_scale: float) -> float:
    """ReduceLROnPlateau: after `patience` epochs without a new best, lr_scale *= factor (never
    below min_scale) and the count starts again. Returns the next epoch's factor."""
    self.plateau.update(self.epoch, score)
    if self.plateau.epochs_since_best >= patience:
      self.lr_scale = max(self.lr_scale * factor, min_scale)
      self.plateau.epochs_since_best = 0
    return self.lr_scale

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, item: dict[str, Any]) -> 'RunState':
    return cls(epoch=item['epoch'], best=Tracker(**item['best']), plateau=Tracker(**item['plateau']),
               lr_scale=item['lr_scale'], history=list(item['history']))


def resume(checkpoints: Checkpoints, config: ml_collections.ConfigDict, workdir: str, target: Any,
           classes: tuple[str, ...], steps_per_epoch: int,
           fingerprints: dict[str, dict[str, Any]]) -> tuple[Any, RunState]:
  """(the latest checkpoint's state tree shaped like `target`, its RunState), or (None, a new
  RunState) when the workdir has none. A resume may change what neither shapes the state, nor the
  steps per epoch, nor the faces (num_epochs, rates, patience, augmentation, seed); the rest is one
  sentence. `fingerprints`: {'train'|'eval': Split.fingerprint()} of this run's data. Best steps
  ahead of the latest are dropped, as the run replays those epochs (fer_jax.checkpoint)."""
  if checkpoints.latest_step() is None:
    checkpoints.drop_replayed()
    return None, RunState()
  saved = checkpoints.restore_meta(LATEST)
  config_checks.check_resumable(saved['train_config'], config, workdir)
  for split, what in (('train', 'trained on other training faces'),
                      ('eval', 'chose its best epoch on other evaluation faces')):
    saved_print = saved.get('data', {}).get(split)  # absent from checkpoints of older versions
    if saved_print and saved_print != fingerprints[split]:
      raise FerJaxError(
          f'{workdir} holds a run that {what} ({saved_print["faces"]}, fingerprint '
          f'{saved_print["sha256"]}) than this config loads ({fingerprints[split]["faces"]}, '
          f'{fingerprints[split]["sha256"]}); a resumed run keeps its data: resume with the data '
          'settings in config.json there, or pass a new --workdir.')
  last = saved['run']['history'][-1]
  if last['step'] != last['epoch'] * steps_per_epoch:
    batch = saved['train_config']['batch_size']
    raise FerJaxError(
        f'{workdir} holds a run of {last["step"] // last["epoch"]} steps per epoch (batch size '
        f'{batch}), and this config and data give {steps_per_epoch} (batch size '
        f'{config.batch_size}); a resumed run keeps its batch size and training faces, so its '
        f'steps and schedule stay one run\'s: resume with --config.batch_size={batch} and the same '
        'data, or pass a new --workdir.')
  saved_classes = tuple(saved['label_map'][str(i)] for i in range(len(saved['label_map'])))
  if saved_classes != tuple(classes):
    raise FerJaxError(f'{workdir} holds a run on classes {", ".join(saved_classes)}, but the data '
                      f'has {", ".join(classes)}; resume with the same data, or pass a new --workdir.')
  checkpoints.drop_replayed()  # only once the resume is accepted: a refused one changes nothing
  try:
    tree, meta = checkpoints.restore(LATEST, target)
  except Exception as e:
    raise FerJaxError(f'the latest checkpoint in {workdir} does not match this config\'s model '
                      f'and optimiser ({type(e).__name__}); resume with the config it was trained '
                      'with (config.json there), or pass a new --workdir.') from None
  run = RunState.from_json(meta['run'])
  checkpoints.check_best(run.best_step, tree, meta)
  logging.info('resumed from %s at epoch %d (step %d)', workdir, run.epoch, int(tree['step']))
  return tree, run
