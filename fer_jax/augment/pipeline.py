"""The 11-step training augmentation, on device, random per face, under one jit.

(1) flip, (2) rotate, (3) affine, (4) perspective, (5) contrast, (6) brightness, (7) sharpness,
(8) CLAHE, (9) to float, (10) normalise to [-1, 1], (11) noise. Steps 9-10 always run (they are
all evaluation uses); the others are listed in `config.augment.steps` and can be left out. The
strength schedule is a function of the step count, so it is traced, never recompiles, and a
resumed run continues it exactly.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from fer_jax import FerJaxError
from fer_jax.augment.ops import STEPS

# The reference's Normalize(mean=0.5, std=0.5): pixels in [0, 255] map to [-1, 1].
NORM_MEAN, NORM_STD = 0.5, 0.5

AugmentFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

# Field -> (low, high) allowed; probabilities are all the *_prob fields.
_RANGES = {'rotate_degrees': (0, 180), 'fill': (0, 255), 'affine_translate': (0, 0.5),
           'affine_scale': (0, 0.9), 'affine_shear': (0, 45), 'perspective_distortion': (0, 1),
           'contrast': (0, 1), 'brightness': (0, 1), 'sharpness_factor': (0, 10),
           'clahe_clip': (0, 256), 'clahe_tiles': (1, 48), 'noise_std': (0, 1),
           'strength_start': (0, 1), 'strength_end': (0, 1), 'ramp_epochs': (0, 10_000)}


def to_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 255.0


def normalize(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] or float [0, 1] faces -> float32 in [-1, 1]."""
  if images.dtype == jnp.uint8:
    images = to_float(images)
  return (images - NORM_MEAN) / NORM_STD


def step_names(augment_config: ml_collections.ConfigDict) -> list[str]:
  names = [n.strip() for n in augment_config.steps.split(',') if n.strip()]
  for name in names:
    if name not in STEPS:
      raise FerJaxError(f'config.augment.steps names {name!r}, which is not a step; use any of '
                        f'{",".join(STEPS)} (comma-separated, or empty for none).')
  return names


def validate(augment_config: ml_collections.ConfigDict) -> None:
  """Every probability in [0, 1], every magnitude in its range, every step known."""
  step_names(augment_config)
  for field, value in augment_config.items():
    if field.endswith('_prob') and not 0.0 <= value <= 1.0:
      raise FerJaxError(f'config.augment.{field}={value} is not a probability; set it in [0, 1].')
    if field in _RANGES:
      low, high = _RANGES[field]
      if not low <= value <= high:
        raise FerJaxError(f'config.augment.{field}={value} is out of range; set it in [{low}, {high}].')
  if 48 % augment_config.clahe_tiles:
    raise FerJaxError(f'config.augment.clahe_tiles={augment_config.clahe_tiles} does not divide 48; '
                      'use 1, 2, 3, 4, 6, 8, 12, 16, 24 or 48.')


def strength_at(augment_config: ml_collections.ConfigDict, epoch: jax.Array) -> jax.Array:
  """Linear from strength_start (epoch 1) to strength_end (after ramp_epochs), then constant."""
  start, end, ramp = augment_config.strength_start, augment_config.strength_end, augment_config.ramp_epochs
  progress = jnp.clip((epoch - 1) / ramp, 0.0, 1.0) if ramp > 0 else 1.0
  return jnp.asarray(start + (end - start) * progress, jnp.float32)


def augment_faces(faces: jax.Array, key: jax.Array, strength: jax.Array,
                  augment_config: ml_collections.ConfigDict) -> jax.Array:
  """uint8 faces -> augmented, normalised float faces (steps 1-11)."""
  names = step_names(augment_config)
  keys = dict(zip(STEPS, jax.random.split(key, len(STEPS))))
  images = to_float(faces)
  for name in names:
    if name != 'noise':
      images = STEPS[name](images, keys[name], strength, augment_config)
  images = normalize(images)
  if 'noise' in names:
    images = STEPS['noise'](images, keys['noise'], strength, augment_config)
  return images


def make_train_augment(augment_config: ml_collections.ConfigDict, steps_per_epoch: int) -> AugmentFn:
  """(uint8 faces, key, step) -> normalised augmented faces, at the scheduled strength."""
  validate(augment_config)
  frozen = ml_collections.FrozenConfigDict(augment_config)

  def augment(faces: jax.Array, key: jax.Array, step: jax.Array) -> jax.Array:
    epoch = step // steps_per_epoch + 1
    return augment_faces(faces, key, strength_at(frozen, epoch), frozen)
  return augment
