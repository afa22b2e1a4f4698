"""What a run knows on the host between epochs, saved as one JSON item in every checkpoint.

The device state (params, BatchNorm statistics, optimiser, step, PRNG key) is the TrainState; the
rest of a run (the last finished epoch, the best score so far, the learning-rate factor of a
'plateau' schedule and the history of every epoch) lives here, so resuming restores it in one
piece and no field has rules of its own.
"""
import dataclasses
from typing import Any


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
