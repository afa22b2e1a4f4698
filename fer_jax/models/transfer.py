"""ImageNet backbones at native 48x48x1, and the "traditional" route the reference compares itself with.

`TransferNet` runs VGG16 (13 convs, 5 pools: 48 -> 1x1) or ResNet-18 / ResNet-50 directly on the
48x48 grey face, with the enhanced dense head of EnhancedCNN48. Their first conv takes one channel:
fer_jax.models.weights folds an RGB kernel into it when ImageNet weights are imported. Module
names follow Keras (VGG16) and torchvision (ResNet) so the import tables stay readable.

`UpsampledVGG16` is the route the reference argues against: resize to 224x224, copy grey to three
channels, VGG16 with its own 4096-4096 classifier. It exists to be measured
(experiments/native_vs_upsampled.py), and trains through the same loop.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models.cnn48 import BN_EPSILON, BN_MOMENTUM, DenseHead, GlobalAvgPool, MaxPool2x2

# (output channels, number of 3x3 convs) per block; a 2x2 max pool after each.
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# block kind and blocks per stage; stage widths 64, 128, 256, 512 (x4 out for bottlenecks).
RESNETS: dict[str, tuple[str, tuple[int, ...]]] = {
    'resnet18': ('basic', (2, 2, 2, 2)), 'resnet50': ('bottleneck', (3, 4, 6, 3))}
ARCHITECTURES = ('vgg16', *RESNETS)


class VGG16Backbone(nn.Module):
  """VGG16's convolutional part (no BatchNorm, as the ImageNet original)."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for block, (features, num_convs) in enumerate(VGG16_BLOCKS, start=1):
      for conv in range(1, num_convs + 1):
        x = nn.Conv(features, (3, 3), padding=1, dtype=self.dtype, name=f'block{block}_conv{conv}')(x)
        x = nn.relu(x)
      x = MaxPool2x2()(x)
    return x


class ResidualBlock(nn.Module):
  """torchvision's BasicBlock (two 3x3) or Bottleneck (1x1, 3x3, 1x1 with 4x expansion).

  stride_in_1x1 puts a bottleneck's stride in its first 1x1 conv (ResNet v1, Keras) instead of the
  3x3 (torchvision, "v1.5")."""
  features: int
  kind: str
  strides: int
  downsample: bool
  stride_in_1x1: bool = False
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    def conv(y, features, size, strides, name):
      return nn.Conv(features, (size, size), strides=strides, padding=size // 2, use_bias=False,
                     dtype=self.dtype, name=name)(y)

    def norm(y, name):
      return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                          epsilon=BN_EPSILON, dtype=self.dtype, name=name)(y)

    if self.kind == 'basic':
      layers = [(self.features, 3, self.strides), (self.features, 3, 1)]
    else:
      first, middle = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
      layers = [(self.features, 1, first), (self.features, 3, middle), (4 * self.features, 1, 1)]
    y = x
    for i, (features, size, strides) in enumerate(layers, start=1):
      y = norm(conv(y, features, size, strides, f'conv{i}'), f'bn{i}')
      if i < len(layers):
        y = nn.relu(y)
    if self.downsample:
      x = norm(conv(x, layers[-1][0], 1, self.strides, 'downsample_conv'), 'downsample_bn')
    return nn.relu(x + y)


class ResNetBackbone(nn.Module):
  """ResNet-18 / -50 with the ImageNet stem (7x7 stride 2, 3x3 max pool): 48 -> 2x2 features."""
  arch: str = 'resnet18'
  stride_in_1x1: bool = False
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    kind, blocks_per_stage = RESNETS[self.arch]
    x = nn.Conv(64, (7, 7), strides=2, padding=3, use_bias=False, dtype=self.dtype, name='conv1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=BN_EPSILON,
                     dtype=self.dtype, name='bn1')(x)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    channels = 64
    for stage, num_blocks in enumerate(blocks_per_stage, start=1):
      features = 64 * 2 ** (stage - 1)
      out_channels = features * (4 if kind == 'bottleneck' else 1)
      for block in range(num_blocks):
        strides = 2 if stage > 1 and block == 0 else 1
        x = ResidualBlock(features, kind, strides, downsample=block == 0 and (
            strides != 1 or channels != out_channels), stride_in_1x1=self.stride_in_1x1,
            dtype=self.dtype, bn_momentum=self.bn_momentum, name=f'layer{stage}_{block}')(x, train)
        channels = out_channels
    return x


class TransferNet(nn.Module):
  """An ImageNet backbone on the 48x48x1 face, global average pool, the enhanced dense head.

  Parameters sit under `backbone` and `head`, the optimiser's two learning-rate groups."""
  arch: str = 'vgg16'
  num_classes: int = 7
  dropout_rate: float = 0.5
  stride_in_1x1: bool = False
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.arch == 'vgg16':
      backbone = VGG16Backbone(dtype=self.dtype, name='backbone')
    else:
      backbone = ResNetBackbone(self.arch, self.stride_in_1x1, dtype=self.dtype,
                                bn_momentum=self.bn_momentum, name='backbone')
    features = GlobalAvgPool()(backbone(x, train))
    return DenseHead(self.num_classes, self.dropout_rate, dtype=self.dtype,
                     bn_momentum=self.bn_momentum, name='head')(features, train)


class VGGClassifier(nn.Module):
  """VGG16's own classifier on the 7x7x512 map: 25088 -> 4096 -> 4096 -> classes (Keras names)."""
  num_classes: int = 7
  dropout_rate: float = 0.5
  widths: Sequence[int] = (4096, 4096)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.widths, start=1):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'fc{i}')(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='predictions')(x)


class UpsampledVGG16(nn.Module):
  """The traditional route: 48x48 grey -> 224x224 (bilinear) -> three equal channels -> VGG16."""
  num_classes: int = 7
  dropout_rate: float = 0.5
  input_size: int = 224
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = BN_MOMENTUM  # no BatchNorm here; accepted so every model builds alike

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = jax.image.resize(x, (x.shape[0], self.input_size, self.input_size, x.shape[-1]), 'bilinear')
    x = jnp.repeat(x, 3, axis=-1)
    features = VGG16Backbone(dtype=self.dtype, name='backbone')(x, train)
    return VGGClassifier(self.num_classes, self.dropout_rate, dtype=self.dtype,
                         name='head')(features, train)
