"""The optimiser: backbone and head get their own learning rate through `optax.multi_transform`.

Each group runs PyTorch's `Adam(weight_decay=wd)` (config.optimizer='adam', the reference) or
`SGD(momentum, nesterov, weight_decay=wd)` ('sgd'): the L2 term is added to the gradient before the
moments (coupled), then scaled by the group's schedule: the reference's StepLR ('step'), a linear
warm-up into a cosine decay to zero over the run ('cosine'), or a warm-up into a constant rate that
`RunState.update_plateau` lowers when validation accuracy stops improving ('plateau', PyTorch's ReduceLROnPlateau).
"""
import functools
from typing import Any, Callable

import flax
import jax.numpy as jnp
import ml_collections
import optax

from fer_jax import FerJaxError

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


SCHEDULES = ('step', 'cosine', 'plateau')
OPTIMIZERS = ('adam', 'sgd')


def create_learning_rate_fn(base_lr: float, config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
  """Learning rate per step for one group, from config.lr_schedule."""
  if config.lr_schedule == 'step':  # the reference's StepLR: x decay_factor every decay_every_epochs
    return optax.exponential_decay(
        init_value=base_lr, transition_steps=config.lr_decay_every_epochs * steps_per_epoch,
        decay_rate=config.lr_decay_factor, staircase=True)
  if config.lr_schedule == 'cosine':
    total_steps = config.num_epochs * steps_per_epoch
    warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=base_lr, warmup_steps=warmup_steps, decay_steps=total_steps)
  if config.lr_schedule == 'plateau':  # the factor on top lives in the optimiser state
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    if not warmup_steps:
      return optax.constant_schedule(base_lr)
    return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup_steps),
                                 optax.constant_schedule(base_lr)], [warmup_steps])
  raise FerJaxError(f'config.lr_schedule={config.lr_schedule!r} is not a schedule; use one of '
                    f'{", ".join(SCHEDULES)}.')


def create_learning_rate_fns(config: ml_collections.ConfigDict,
                             steps_per_epoch: int) -> dict[str, optax.Schedule]:
  """Per-group schedules; the backbone's is 0 for config.freeze_backbone_epochs (a pretrained
  backbone kept still while a fresh head learns)."""
  backbone = create_learning_rate_fn(config.backbone_lr, config, steps_per_epoch)
  frozen_steps = config.freeze_backbone_epochs * steps_per_epoch
  if frozen_steps:
    backbone = functools.partial(_frozen_until, frozen_steps=frozen_steps, schedule=backbone)
  return {'backbone': backbone,
          'head': create_learning_rate_fn(config.head_lr, config, steps_per_epoch)}


def _frozen_until(step: Any, frozen_steps: int, schedule: optax.Schedule) -> Any:
  return jnp.where(step < frozen_steps, 0.0, schedule(step))


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fns: dict[str, Callable]) -> optax.GradientTransformation:
  if config.optimizer not in OPTIMIZERS:
    raise FerJaxError(f'config.optimizer={config.optimizer!r} is not an optimiser; use one of '
                      f'{", ".join(OPTIMIZERS)}.')

  def with_l2(schedule: optax.Schedule) -> optax.GradientTransformation:
    moments = (optax.scale_by_adam() if config.optimizer == 'adam' else
               optax.trace(decay=config.momentum, nesterov=config.nesterov))
    return optax.chain(optax.add_decayed_weights(config.weight_decay), moments,
                       optax.scale_by_learning_rate(schedule))
  tx = optax.multi_transform({group: with_l2(learning_rate_fns[group]) for group in GROUPS},
                             param_labels)
  if config.lr_schedule != 'plateau':
    return tx
  # The plateau factor is a hyperparameter in the optimiser state: checkpointed with it, and set
  # between epochs without recompiling the step.
  return optax.chain(tx, optax.inject_hyperparams(optax.scale)(step_size=1.0))


def plateau_scale(opt_state: Any) -> Any:
  return optax.tree_utils.tree_get(opt_state, 'step_size')


def with_plateau_scale(opt_state: Any, scale: float) -> Any:
  """The optimiser state of a 'plateau' run with its learning-rate factor set to `scale`."""
  return optax.tree_utils.tree_set(
      opt_state, step_size=jnp.asarray(scale, plateau_scale(opt_state).dtype))


def validate_plateau(config: ml_collections.ConfigDict) -> None:
  """The plateau fields, whatever the schedule: a wrong value is wrong before it is used."""
  if not 0.0 < config.plateau_factor < 1.0:
    raise FerJaxError(f'config.plateau_factor={config.plateau_factor} is out of range; set it in '
                      '(0, 1), e.g. 0.5.')
  if config.plateau_patience < 1:
    raise FerJaxError(f'config.plateau_patience={config.plateau_patience} must be at least 1 epoch.')
  if not 0.0 <= config.plateau_min_scale <= 1.0:
    raise FerJaxError(f'config.plateau_min_scale={config.plateau_min_scale} is out of range; set '
                      'it in [0, 1].')
