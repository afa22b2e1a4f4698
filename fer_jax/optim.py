"""The optimiser: backbone and head get their own learning rate through `optax.multi_transform`.

Each group runs PyTorch's `Adam(weight_decay=wd)`: the L2 term is added to the gradient before the
Adam moments (coupled), then scaled by the group's stepped schedule.
"""
from typing import Any, Callable

import flax
import ml_collections
import optax

GROUPS = ('backbone', 'head')


def param_labels(params: Any) -> Any:
  """'backbone' or 'head' for every leaf, by the top-level module name in its path."""
  def label(path: tuple[str, ...], _) -> str:
    if path[0] not in GROUPS:
      raise ValueError(f'parameter {"/".join(path)} is under neither {GROUPS}; name the module '
                       'backbone or head so the optimiser can group it.')
    return path[0]
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  return flax.traverse_util.unflatten_dict({path: label(path, v) for path, v in flat.items()})


def create_learning_rate_fn(base_lr: float, config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
  """The seed's StepLR: x decay_factor every decay_epochs epochs, counted in steps."""
  return optax.exponential_decay(
      init_value=base_lr, transition_steps=config.lr_decay_every_epochs * steps_per_epoch,
      decay_rate=config.lr_decay_factor, staircase=True)


def create_learning_rate_fns(config: ml_collections.ConfigDict,
                             steps_per_epoch: int) -> dict[str, optax.Schedule]:
  return {'backbone': create_learning_rate_fn(config.backbone_lr, config, steps_per_epoch),
          'head': create_learning_rate_fn(config.head_lr, config, steps_per_epoch)}


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fns: dict[str, Callable]) -> optax.GradientTransformation:
  def adam_l2(schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.scale_by_adam(),
                       optax.scale_by_learning_rate(schedule))
  return optax.multi_transform({group: adam_l2(learning_rate_fns[group]) for group in GROUPS},
                               param_labels)
