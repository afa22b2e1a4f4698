"""BatchNorm statistics measured on clean faces ("precise BN").

Training keeps running averages of statistics computed with dropout on and on augmented faces.
Dropout before a BatchNorm changes the variance it sees (the reference puts Dropout2d before every
block's first conv and dropout before every hidden dense layer), so in evaluation mode the stored
statistics no longer match the activations. Measured on the configs/best_cpu.py run after epoch 2,
same weights, all 3,589 PublicTest faces: 27.61 % with the running averages, 43.58 % with
statistics re-measured on 4,096 clean Training faces (43.35 % with 1,024; experiments/README.md,
"BatchNorm statistics"). `recalibrate` re-measures them exactly: the population mean and (biased) variance
over the given faces, with dropout off and no augmentation. It changes no parameter, so training is unaffected; only what evaluation and checkpoints use.
"""
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from fer_jax import augment, models
from fer_jax.models.cnn48 import BN_EPSILON


def recalibrate(model_config: ml_collections.ConfigDict, variables: dict[str, Any],
                images: jax.Array, batch_size: int) -> Any:
  """Population BatchNorm statistics of all `images` (uint8) for variables['params']: whole
  batches in a loop, the faces past the last whole batch in one smaller batch, every face weighed
  once. Returns a new batch_stats tree."""
  model = models.create_model(model_config, dropout_rate=0.0, bn_momentum=0.0)

  def batch_moments(faces):
    # With momentum 0 the "updated running average" is exactly this batch's mean and variance.
    _, updates = model.apply(variables, augment.normalize(faces), train=True, mutable=['batch_stats'])
    return updates['batch_stats']

  num_batches, remainder = divmod(images.shape[0], batch_size)
  moments, counts = [], []
  if num_batches:
    batches = images[:num_batches * batch_size].reshape(num_batches, batch_size, *images.shape[1:])
    moments.append(jax.lax.scan(lambda carry, faces: (carry, batch_moments(faces)), None, batches)[1])
    counts += [batch_size] * num_batches
  if remainder:
    moments.append(jax.tree_util.tree_map(lambda x: x[None],
                                          batch_moments(images[num_batches * batch_size:])))
    counts.append(remainder)
  per_batch = jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts), *moments)
  weights = jnp.asarray(counts, jnp.float32) / images.shape[0]

  def combine(layer: dict[str, jax.Array]) -> dict[str, jax.Array]:
    weigh = lambda x: jnp.tensordot(weights, x, axes=1)
    mean = weigh(layer['mean'])                          # E[x]
    second = weigh(layer['var'] + layer['mean'] ** 2)    # E[x^2]
    return {'mean': mean, 'var': jnp.maximum(second - mean ** 2, 0.0)}
  return jax.tree_util.tree_map(combine, per_batch,
                                is_leaf=lambda node: isinstance(node, dict) and 'mean' in node)


def fold(variables: dict[str, Any], epsilon: float = BN_EPSILON) -> dict[str, Any]:
  """EnhancedCNN48's params with each evaluation-mode BatchNorm folded into the conv or dense layer
  before it, for the model built with folded_batchnorm=True: one pass less over every activation
  in inference. Conv_i / Dense_i pairs with BatchNorm_i of the same group (the reference's layer order).
  """
  folded = {}
  for group, layers in variables['params'].items():
    folded[group] = {}
    for name, layer in layers.items():
      index = re.fullmatch(r'(?:Conv|Dense)_(\d+)', name)
      if index is None:
        continue
      bn_name = f'BatchNorm_{index.group(1)}'
      if bn_name not in layers:  # the last dense layer has no BatchNorm
        folded[group][name] = layer
        continue
      stats = variables['batch_stats'][group][bn_name]
      scale = layers[bn_name]['scale'] * jax.lax.rsqrt(stats['var'] + epsilon)
      folded[group][name] = {'kernel': layer['kernel'] * scale,
                             'bias': (layer['bias'] - stats['mean']) * scale + layers[bn_name]['bias']}
  return {'params': folded}
