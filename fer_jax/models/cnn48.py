"""The reference's EnhancedCNNGrayscale48 as a Flax linen module.

Parameters live under two top-level names, `backbone` (the conv blocks) and `head` (the dense
layers), because the optimiser gives each its own learning rate.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

# (output channels, number of 3x3 convs, max pool after the block)
CONV_BLOCKS: tuple[tuple[int, int, bool], ...] = (
    (32, 2, True), (64, 2, True), (128, 3, True), (256, 3, True), (512, 2, False))
# Dropout2d after block i is dropout_rate * CONV_DROPOUT_SCALE[i].
CONV_DROPOUT_SCALE: tuple[float, ...] = (0.2, 0.25, 0.3, 0.35, 0.4)
HEAD_WIDTHS: tuple[int, ...] = (1024, 512, 256, 128)
# Dropout before hidden dense layer i is dropout_rate * HEAD_DROPOUT_SCALE[i].
HEAD_DROPOUT_SCALE: tuple[float, ...] = (1.0, 0.7, 0.5, 0.3)

# PyTorch BatchNorm defaults (momentum 0.1 there is 0.9 here), as the reference trains with them.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class MaxPool2x2(nn.Module):
  """A module, not a bare function, so the model summary can count pools."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class GlobalAvgPool(nn.Module):

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return jnp.mean(x, axis=(1, 2))


class ConvBackbone(nn.Module):
  """Five conv blocks, 48x48x1 -> 512 features."""
  dropout_rate: float = 0.5
  blocks: Sequence[tuple[int, int, bool]] = CONV_BLOCKS
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = BN_MOMENTUM
  folded_batchnorm: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    for block, (features, num_convs, pool) in enumerate(self.blocks):
      for _ in range(num_convs):
        x = nn.Conv(features, (3, 3), padding=1, dtype=self.dtype)(x)
        if not self.folded_batchnorm:
          x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                           epsilon=BN_EPSILON, dtype=self.dtype)(x)
        x = nn.relu(x)
      if pool:
        x = MaxPool2x2()(x)
      # Dropout2d: one mask value per (example, channel), broadcast over H and W.
      rate = self.dropout_rate * CONV_DROPOUT_SCALE[block]
      x = nn.Dropout(rate, broadcast_dims=(1, 2), deterministic=not train)(x)
    return GlobalAvgPool()(x)


class DenseHead(nn.Module):
  """512 -> 1024 -> 512 -> 256 -> 128 -> classes, dropout before each hidden layer."""
  num_classes: int = 7
  dropout_rate: float = 0.5
  widths: Sequence[int] = HEAD_WIDTHS
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = BN_MOMENTUM
  folded_batchnorm: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    for layer, width in enumerate(self.widths):
      x = nn.Dropout(self.dropout_rate * HEAD_DROPOUT_SCALE[layer], deterministic=not train)(x)
      x = nn.Dense(width, dtype=self.dtype)(x)
      if not self.folded_batchnorm:
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=BN_EPSILON, dtype=self.dtype)(x)
      x = nn.relu(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32)(x)


class EnhancedCNN48(nn.Module):
  """Input (B, 48, 48, 1) normalised to [-1, 1]; output (B, num_classes) logits.

  bn_momentum = 0 makes a train-mode call return the batch's own statistics (fer_jax.batchnorm);
  folded_batchnorm = True drops the BatchNorms for inference with fer_jax.batchnorm.fold's params.
  """
  num_classes: int = 7
  dropout_rate: float = 0.5
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = BN_MOMENTUM
  folded_batchnorm: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    features = ConvBackbone(self.dropout_rate, dtype=self.dtype, bn_momentum=self.bn_momentum,
                            folded_batchnorm=self.folded_batchnorm, name='backbone')(x, train)
    return DenseHead(self.num_classes, self.dropout_rate, dtype=self.dtype,
                     bn_momentum=self.bn_momentum, folded_batchnorm=self.folded_batchnorm,
                     name='head')(features, train)


def closed_form_param_count(num_classes: int = 7, in_channels: int = 1) -> int:
  """Parameter count from the layer list alone, to check the module against."""
  total, channels = 0, in_channels
  for features, num_convs, _ in CONV_BLOCKS:
    for _ in range(num_convs):
      total += 9 * channels * features + features  # 3x3 kernel + bias
      total += 2 * features                        # BatchNorm scale + bias
      channels = features
  width_in = channels
  for width in HEAD_WIDTHS:
    total += width_in * width + width + 2 * width
    width_in = width
  return total + width_in * num_classes + num_classes
