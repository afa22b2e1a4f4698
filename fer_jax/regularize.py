"""Batch-level regularisers of the accuracy recipe, applied in the train step after the
per-face augmentation: mixup / cutmix (soft targets), random erasing, and class weights for
FER2013's rare classes (disgust: 436 of 28,709 training faces).

All are off in configs/enhanced.py (the reference has none) and switched on by config fields:
`mixup_alpha`, `cutmix_alpha` (+ `cutmix_prob` when both are on), `random_erasing`,
`class_weighting`.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fer_jax import FerJaxError

# (images, one-hot targets, key) -> (images, targets)
MixFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
ERASE_AREA = (0.02, 0.25)   # fraction of the face, as torchvision's RandomErasing
ERASE_ASPECT = (0.3, 3.3)


def mixup(images: jax.Array, targets: jax.Array, key: jax.Array, alpha: float):
  """x lam + x' (1 - lam) with the batch reversed as partner, lam ~ Beta(alpha, alpha)."""
  lam = jax.random.beta(key, alpha, alpha)
  return (lam * images + (1 - lam) * images[::-1], lam * targets + (1 - lam) * targets[::-1])


def cutmix(images: jax.Array, targets: jax.Array, key: jax.Array, alpha: float):
  """A box of the partner face pasted in; the targets mix by the box's exact share of pixels."""
  lam_key, y_key, x_key = jax.random.split(key, 3)
  lam = jax.random.beta(lam_key, alpha, alpha)
  height, width = images.shape[1:3]
  cut_h = jnp.round(height * jnp.sqrt(1 - lam)).astype(jnp.int32)
  cut_w = jnp.round(width * jnp.sqrt(1 - lam)).astype(jnp.int32)
  center_y = jax.random.randint(y_key, (), 0, height)
  center_x = jax.random.randint(x_key, (), 0, width)
  top, bottom = jnp.clip(center_y - cut_h // 2, 0, height), jnp.clip(center_y + cut_h - cut_h // 2, 0, height)
  left, right = jnp.clip(center_x - cut_w // 2, 0, width), jnp.clip(center_x + cut_w - cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  box = ((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right))[None, :, :, None]
  share = box.mean()  # the partner's share of the pixels
  return (jnp.where(box, images[::-1], images), (1 - share) * targets + share * targets[::-1])


def random_erase(images: jax.Array, key: jax.Array, prob: float) -> jax.Array:
  """Per face, with probability prob, a rectangle (2-25 % of the area, aspect 0.3-3.3) replaced
  by uniform noise on the [-1, 1] scale."""
  batch, height, width = images.shape[:3]
  keys = jax.random.split(key, 6)
  area = jax.random.uniform(keys[0], (batch,), minval=ERASE_AREA[0], maxval=ERASE_AREA[1]) * height * width
  log_aspect = jax.random.uniform(keys[1], (batch,), minval=np.log(ERASE_ASPECT[0]),
                                  maxval=np.log(ERASE_ASPECT[1]))
  box_h = jnp.clip(jnp.round(jnp.sqrt(area * jnp.exp(log_aspect))), 1, height).astype(jnp.int32)
  box_w = jnp.clip(jnp.round(jnp.sqrt(area / jnp.exp(log_aspect))), 1, width).astype(jnp.int32)
  top = (jax.random.uniform(keys[2], (batch,)) * (height - box_h + 1)).astype(jnp.int32)
  left = (jax.random.uniform(keys[3], (batch,)) * (width - box_w + 1)).astype(jnp.int32)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  box = ((rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None]) &
         (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None]))
  box &= (jax.random.uniform(keys[4], (batch,)) < prob)[:, None, None]
  noise = jax.random.uniform(keys[5], images.shape, images.dtype, -1.0, 1.0)
  return jnp.where(box[..., None], noise, images)


def make_mix_fn(config: ml_collections.ConfigDict) -> MixFn | None:
  """The batch regulariser the config asks for, or None (the step then uses hard labels)."""
  mixup_alpha, cutmix_alpha = config.mixup_alpha, config.cutmix_alpha
  erasing, cutmix_prob = config.random_erasing, config.cutmix_prob
  if not (mixup_alpha or cutmix_alpha or erasing):
    return None

  def mix(images, targets, key):
    erase_key, choice_key, mix_key = jax.random.split(key, 3)
    if erasing:
      images = random_erase(images, erase_key, erasing)
    if mixup_alpha and cutmix_alpha:
      use_cutmix = jax.random.uniform(choice_key) < cutmix_prob
      return jax.lax.cond(use_cutmix, lambda: cutmix(images, targets, mix_key, cutmix_alpha),
                          lambda: mixup(images, targets, mix_key, mixup_alpha))
    if cutmix_alpha:
      return cutmix(images, targets, mix_key, cutmix_alpha)
    if mixup_alpha:
      return mixup(images, targets, mix_key, mixup_alpha)
    return images, targets
  return mix


def class_weights(labels: np.ndarray, num_classes: int, power: float) -> np.ndarray:
  """(n / (C n_c)) ** power per class, rescaled so the training faces' mean weight is 1:
  power 0 = unweighted, 1 = inverse frequency, 0.5 = its square root."""
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  if power and (counts == 0).any():
    missing = [c for c in range(num_classes) if counts[c] == 0]
    raise FerJaxError(f'config.class_weighting={power} needs every class in the training data, '
                      f'but classes {missing} have no face; set it to 0 or use more data.')
  weights = (counts.sum() / (num_classes * np.maximum(counts, 1))) ** power
  weights /= (weights * counts).sum() / counts.sum()
  return weights.astype(np.float32)


def validate(config: ml_collections.ConfigDict) -> None:
  for field in ('mixup_alpha', 'cutmix_alpha', 'class_weighting'):
    if config[field] < 0:
      raise FerJaxError(f'config.{field}={config[field]} is negative; use 0 (off) or more.')
  for field in ('random_erasing', 'cutmix_prob'):
    if not 0.0 <= config[field] <= 1.0:
      raise FerJaxError(f'config.{field}={config[field]} is a probability; set it in [0, 1].')
