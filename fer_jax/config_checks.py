"""The checks a config passes before any work starts, so a bad value (or a bad study trial) is one
sentence naming the field and the fix, not minutes of data preparation followed by a traceback or
a run that trains on nonsense."""
import os

from absl import logging
import ml_collections
import numpy as np

from fer_jax import FerJaxError, augment, models, optim, regularize


def validate(config: ml_collections.ConfigDict) -> None:
  """The checks that need no data, so a bad config (or study) fails before any work starts."""
  augment.validate(config.augment)
  regularize.validate(config)
  if config.model.name not in models.MODELS:
    raise FerJaxError(f'config.model.name={config.model.name!r} is not a model; use one of '
                      f'{", ".join(models.MODELS)}.')
  lr_fns = optim.create_learning_rate_fns(config, steps_per_epoch=100)  # any count: checks only
  optim.create_optimizer(config, lr_fns)
  optim.validate_plateau(config)
  for field in ('batch_size', 'eval_batch_size', 'num_epochs', 'steps_per_call',
                'checkpoint_every_epochs', 'log_every_steps'):
    if config[field] < 1:
      raise FerJaxError(f'config.{field}={config[field]} must be at least 1.')
  if config.bn_recalibration_faces < 0:
    raise FerJaxError(f'config.bn_recalibration_faces={config.bn_recalibration_faces} is negative; '
                      'use 0 (keep the running averages) or a number of faces.')
  if config.freeze_backbone_epochs < 0:
    raise FerJaxError(f'config.freeze_backbone_epochs={config.freeze_backbone_epochs} is negative; '
                      'use 0 (train the backbone from the start) or a number of epochs.')
  if config.model.pretrained_weights:
    from fer_jax.models import transfer, weights
    if config.model.name not in transfer.ARCHITECTURES:
      raise FerJaxError(f'config.model.pretrained_weights is set, but config.model.name='
                        f'{config.model.name!r} takes no ImageNet weights; use one of '
                        f'{", ".join(transfer.ARCHITECTURES)} or clear pretrained_weights.')
    if not os.path.isfile(config.model.pretrained_weights):
      raise FerJaxError(f'config.model.pretrained_weights={config.model.pretrained_weights} does '
                        'not exist; pass the path of a Keras .h5 or torchvision .safetensors/.npz.')
    weights.first_conv_to_grey(np.zeros((1, 1, 3, 1), np.float32),  # checks first_conv's mode
                               config.model.first_conv)
  if not 0.0 <= config.model.dropout_rate < 1.0:
    raise FerJaxError(f'config.model.dropout_rate={config.model.dropout_rate} is out of range; '
                      'set it in [0, 1).')
  if not 0.0 <= config.ema_decay < 1.0:
    raise FerJaxError(f'config.ema_decay={config.ema_decay} is out of range; set it in [0, 1) '
                      '(0 = no moving average; 0.999 is usual).')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise FerJaxError(f'config.label_smoothing={config.label_smoothing} is out of range; '
                      'set it in [0, 1).')
  for field, fix in (('backbone_lr', 'e.g. 1e-3 (0 holds the backbone still)'),
                     ('head_lr', 'e.g. 1e-3'), ('weight_decay', 'e.g. 1e-4 (0 = no L2)'),
                     ('warmup_epochs', 'e.g. 1 (0 = none)'), ('early_stopping_patience', '0 = never stop'),
                     ('data.max_train_examples', '0 = all'), ('data.max_eval_examples', '0 = all'),
                     ('data.generated_train_size', 'e.g. 512'),
                     ('data.generated_eval_size', 'e.g. 256')):
    value = config[field.split('.')[0]] if '.' not in field else config.data[field.split('.')[1]]
    if not np.isfinite(value):
      raise FerJaxError(f'config.{field}={value} is not a finite number; use 0 or more ({fix}).')
    if value < 0:
      raise FerJaxError(f'config.{field}={value} is negative; use 0 or more ({fix}).')
  if config.init_from and config.init_from != 'pretrained' and not os.path.isdir(config.init_from):
    raise FerJaxError(f'config.init_from={config.init_from!r} is neither "pretrained" nor a '
                      'workdir; pass "pretrained" or the folder of a finished training run.')
  if config.select_metric not in ('accuracy', 'macro_f1'):
    raise FerJaxError(f'config.select_metric={config.select_metric!r} is unknown; use accuracy or '
                      'macro_f1.')
  if config.select_tta not in ('none', 'flip', 'ten_crop'):
    raise FerJaxError(f'config.select_tta={config.select_tta!r} is unknown; use none, flip or '
                      'ten_crop.')
  from fer_jax.data import SPLITS
  for field in ('train_split', 'eval_split'):
    if config.data[field] not in SPLITS:
      raise FerJaxError(f'config.data.{field}={config.data[field]!r} is not a split; use one of '
                        f'{", ".join(SPLITS)}.')
  for _, path in parse_evals(config.evals):
    if not os.path.exists(path):
      raise FerJaxError(f'config.evals names {path}, which does not exist; pass a FER2013 CSV, an '
                        'arrays file or an image-folder root.')
  if not 0.0 <= config.momentum < 1.0:
    raise FerJaxError(f'config.momentum={config.momentum} is out of range; set it in [0, 1), e.g. 0.9.')
  if config.lr_schedule == 'step' and not 0.0 < config.lr_decay_factor <= 1.0:
    raise FerJaxError(f'config.lr_decay_factor={config.lr_decay_factor} is out of range; set it in '
                      '(0, 1], e.g. 0.5.')
  if config.lr_schedule == 'step' and config.lr_decay_every_epochs < 1:
    raise FerJaxError(f'config.lr_decay_every_epochs={config.lr_decay_every_epochs} must be at '
                      'least 1 (e.g. 8); for a constant rate set --config.lr_decay_factor=1.')
  if config.lr_schedule != 'step' and config.warmup_epochs >= config.num_epochs:
    raise FerJaxError(f'config.warmup_epochs={config.warmup_epochs} is not below '
                      f'config.num_epochs={config.num_epochs}, so the rates would never reach '
                      'config.head_lr / config.backbone_lr; lower it (e.g. 1) or train longer.')
  _check_dtype(config.model.dtype)
  if not isinstance(config.seed, int) or not 0 <= config.seed < 2**32:
    raise FerJaxError(f'config.seed={config.seed} is out of range; use a whole number from 0 to '
                      f'{2**32 - 1} (JAX keys hold 32 bits, so larger seeds would repeat others).')


# Compute dtypes the models train in: parameters stay float32 (flax's param_dtype), so these set
# the precision of activations and matrix products only.
COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


def _check_dtype(name: str) -> None:
  if str(name) not in COMPUTE_DTYPES:
    raise FerJaxError(f'config.model.dtype={name!r} is not a compute dtype the models train in; '
                      f'use one of {", ".join(COMPUTE_DTYPES)}.')


def warn_about_recipe(config: ml_collections.ConfigDict) -> None:
  """Says at start when a recipe is known not to learn, with the override that does. A backbone
  from ImageNet weights or config.init_from is not random, so a low rate is what it wants."""
  if (0 < config.backbone_lr * 10 <= config.head_lr and not config.model.pretrained_weights
      and not config.init_from):
    logging.warning(
        'config.backbone_lr=%g is for pretrained backbones: a randomly initialised one hardly moves '
        'at this rate, and the model stays near the majority class (about 25 %% PublicTest accuracy '
        'after 2 epochs); add --config.backbone_lr=%g to train it from scratch, or use '
        'configs/quick.py for a usable model in under half an hour on a CPU.',
        config.backbone_lr, config.head_lr)


# Fields whose change alters what a checkpoint holds (the shapes of its params or optimiser state).
_STATE_FIELDS = ('model.name', 'model.num_classes', 'optimizer', 'ema_decay', 'lr_schedule')


def check_resumable(saved_config: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
  """A resumed run must build the same state as the one saved: compares the fields that shape it."""
  def shape_of(field, value):
    if field == 'ema_decay':
      return value > 0  # any decay keeps the average; 0 keeps none
    if field == 'lr_schedule':
      return value == 'plateau'  # the plateau factor lives in the optimiser state
    return value
  for field in _STATE_FIELDS:
    group, _, name = field.rpartition('.')
    saved = (saved_config[group] if group else saved_config).get(name)
    current = (config[group] if group else config)[name]
    if saved is not None and shape_of(field, saved) != shape_of(field, current):
      raise FerJaxError(
          f'{workdir} holds a run trained with config.{field}={saved!r}, and the config now says '
          f'{current!r}, which changes what its checkpoint holds; resume with '
          f'--config.{field}={saved!r}, or pass a new --workdir.')


def parse_evals(evals: str) -> list[tuple[str, str]]:
  """'name=path,name=path' -> [(name, path)]: the extra datasets scored every epoch."""
  pairs = []
  for item in filter(None, (part.strip() for part in evals.split(','))):
    name, sep, path = item.partition('=')
    if not sep or not name.isidentifier() or not path:
      raise FerJaxError(f'config.evals entry {item!r} is not name=path; write e.g. '
                        '--config.evals=raf=/data/raf_db,ck=/data/ck_plus (names: letters, digits, _).')
    if name in dict(pairs):
      raise FerJaxError(f'config.evals names {name!r} twice; give each dataset its own name.')
    pairs.append((name, path))
  return pairs
