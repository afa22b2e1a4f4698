"""On-device augmentation and the normalisation shared by training, evaluation and prediction."""
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from fer_jax import FerJaxError

# The seed's Normalize(mean=0.5, std=0.5): pixels in [0, 255] map to [-1, 1].
NORM_MEAN, NORM_STD = 0.5, 0.5

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def to_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 255.0


def normalize(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] or float [0, 1] faces -> float32 in [-1, 1]."""
  if images.dtype == jnp.uint8:
    images = to_float(images)
  return (images - NORM_MEAN) / NORM_STD


def random_flip(images: jax.Array, key: jax.Array, prob: float) -> jax.Array:
  """Mirrors each face left-right with probability `prob`, independently per face."""
  flip = jax.random.bernoulli(key, prob, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


def make_train_augment(augment_config: ml_collections.ConfigDict) -> AugmentFn:
  """(uint8 faces, key) -> normalised float faces, augmented per face."""
  prob = augment_config.flip_prob
  if not 0.0 <= prob <= 1.0:
    raise FerJaxError(f'config.augment.flip_prob={prob} is outside [0, 1]; set a probability.')

  def augment(images: jax.Array, key: jax.Array) -> jax.Array:
    return normalize(random_flip(to_float(images), key, prob))
  return augment
