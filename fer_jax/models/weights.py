"""ImageNet weights for the transfer backbones, from a file the user passes (nothing is downloaded).

Formats: Keras `.h5` weight files (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`,
`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`, read with h5py) and torchvision
`state_dict`s of vgg16 / resnet18 / resnet50 saved as `.safetensors` or `.npz` (no torch needed;
BatchNorm running statistics included). Convert a torchvision model once with e.g.
`safetensors.torch.save_file(torchvision.models.resnet18(weights='DEFAULT').state_dict(), 'r18.safetensors')`.

The first conv becomes one-channel: on a grey face repeated on three channels an RGB conv equals
the conv with the three kernels summed ('sum', exact), or weighted by luminance ('luminance',
0.299 R + 0.587 G + 0.114 B in the file's channel order: Keras' ImageNet models take BGR).
Keras ResNet-50 convs have biases; each is folded into its BatchNorm's mean (exact, BatchNorm
removes any constant). Every layer is checked before anything is replaced, so a bad file changes
nothing.
"""
import os
from typing import Any, Callable, Iterator

import flax
import numpy as np

from fer_jax import FerJaxError
from fer_jax.models.transfer import RESNETS, VGG16_BLOCKS

LUMINANCE_RGB = np.array([0.299, 0.587, 0.114], np.float32)
FIRST_CONV_MODES = ('sum', 'luminance')
# The order of the first conv's input channels in each source's ImageNet models.
SOURCES = {'keras': {'channels': 'bgr'}, 'torchvision': {'channels': 'rgb'}}
# torchvision vgg16: indices of the convs inside `features`.
TORCH_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def read_weight_file(path: str) -> tuple[str, dict[str, np.ndarray]]:
  """(source, {name: array}) of a Keras .h5 or a torchvision .safetensors / .npz file."""
  if not os.path.isfile(path):
    raise FerJaxError(f'the weight file {path} does not exist; pass the path of a Keras .h5 or a '
                      'torchvision .safetensors / .npz file (config.model.pretrained_weights).')
  extension = os.path.splitext(path)[1].lower()
  try:
    if extension in ('.h5', '.hdf5'):
      return 'keras', dict(_read_keras_h5(path))
    if extension == '.safetensors':
      from safetensors.numpy import load_file
      return 'torchvision', load_file(path)
    if extension == '.npz':
      with np.load(path, allow_pickle=False) as arrays:
        return 'torchvision', dict(arrays)
  except ImportError as e:
    raise FerJaxError(f'reading {path} needs {e.name}; pip install "fer_jax[transfer]".') from e
  except (OSError, ValueError, KeyError) as e:
    raise FerJaxError(f'{path} is not a readable {extension} weight file ({e}); pass a Keras .h5 '
                      'or a torchvision .safetensors / .npz file.') from e
  raise FerJaxError(f'{path} has extension {extension or "(none)"}, not a weight file fer_jax reads; '
                    'pass a Keras .h5 or a torchvision .safetensors / .npz file.')


def _read_keras_h5(path: str) -> Iterator[tuple[str, np.ndarray]]:
  """Keras 2 weight files: root attr layer_names; each layer group lists its weight_names."""
  import h5py
  with h5py.File(path, 'r') as f:
    group = f['model_weights'] if 'model_weights' in f else f  # a whole saved model, or weights
    if 'layer_names' not in group.attrs:
      raise ValueError('no layer_names attribute, so not a Keras weights file')
    for layer in group.attrs['layer_names']:
      layer = layer.decode() if isinstance(layer, bytes) else str(layer)
      for weight in group[layer].attrs.get('weight_names', []):
        weight = weight.decode() if isinstance(weight, bytes) else str(weight)
        name = weight.split('/')[-1].split(':')[0]  # 'block1_conv1/kernel:0' -> 'kernel'
        yield f'{layer}/{name}', np.asarray(group[layer][weight])


# A mapping: flax path ('params', 'backbone', ..., 'kernel') -> a function of the file's arrays
# giving the value, and the source name it reads (for messages).
Source = tuple[str, Callable[[dict[str, np.ndarray]], np.ndarray]]


def _take(name: str, convert: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> Source:
  return name, lambda arrays: convert(arrays[name])


def _oihw_to_hwio(kernel: np.ndarray) -> np.ndarray:
  return np.transpose(kernel, (2, 3, 1, 0)) if kernel.ndim == 4 else kernel


def _vgg16_mapping(source: str) -> dict[tuple[str, ...], Source]:
  mapping, index = {}, iter(TORCH_VGG16_CONVS)
  for block, (_, num_convs) in enumerate(VGG16_BLOCKS, start=1):
    for conv in range(1, num_convs + 1):
      path = ('params', 'backbone', f'block{block}_conv{conv}')
      if source == 'keras':
        mapping[path + ('kernel',)] = _take(f'block{block}_conv{conv}/kernel')
        mapping[path + ('bias',)] = _take(f'block{block}_conv{conv}/bias')
      else:
        i = next(index)
        mapping[path + ('kernel',)] = _take(f'features.{i}.weight', _oihw_to_hwio)
        mapping[path + ('bias',)] = _take(f'features.{i}.bias')
  return mapping


def _resnet_layers(arch: str) -> Iterator[tuple[tuple[str, ...], str, str]]:
  """(flax module path, torchvision prefix, Keras prefix) of every conv+BatchNorm pair."""
  kind, blocks_per_stage = RESNETS[arch]
  yield (('conv1',), ('bn1',)), ('conv1', 'bn1'), ('conv1_conv', 'conv1_bn')
  convs = 2 if kind == 'basic' else 3
  for stage, num_blocks in enumerate(blocks_per_stage, start=1):
    for block in range(num_blocks):
      flax_block, torch_block = f'layer{stage}_{block}', f'layer{stage}.{block}'
      keras_block = f'conv{stage + 1}_block{block + 1}'
      for i in range(1, convs + 1):
        yield ((flax_block, f'conv{i}'), (flax_block, f'bn{i}')), \
              (f'{torch_block}.conv{i}', f'{torch_block}.bn{i}'), \
              (f'{keras_block}_{i}_conv', f'{keras_block}_{i}_bn')
      if block == 0 and (stage > 1 or kind == 'bottleneck'):
        yield ((flax_block, 'downsample_conv'), (flax_block, 'downsample_bn')), \
              (f'{torch_block}.downsample.0', f'{torch_block}.downsample.1'), \
              (f'{keras_block}_0_conv', f'{keras_block}_0_bn')


def _resnet_mapping(arch: str, source: str) -> dict[tuple[str, ...], Source]:
  mapping = {}
  for (conv_path, bn_path), torch_names, keras_names in _resnet_layers(arch):
    params, stats = ('params', 'backbone') + bn_path, ('batch_stats', 'backbone') + bn_path
    if source == 'torchvision':
      conv, bn = torch_names
      mapping[('params', 'backbone') + conv_path + ('kernel',)] = _take(f'{conv}.weight', _oihw_to_hwio)
      mapping[params + ('scale',)] = _take(f'{bn}.weight')
      mapping[params + ('bias',)] = _take(f'{bn}.bias')
      mapping[stats + ('mean',)] = _take(f'{bn}.running_mean')
      mapping[stats + ('var',)] = _take(f'{bn}.running_var')
    else:
      conv, bn = keras_names
      mapping[('params', 'backbone') + conv_path + ('kernel',)] = _take(f'{conv}/kernel')
      mapping[params + ('scale',)] = _take(f'{bn}/gamma')
      mapping[params + ('bias',)] = _take(f'{bn}/beta')
      # BN(conv(x) + b) with mean m is BN(conv(x)) with mean m - b.
      mapping[stats + ('mean',)] = (f'{bn}/moving_mean', lambda arrays, conv=conv, bn=bn: (
          arrays[f'{bn}/moving_mean'] - arrays.get(f'{conv}/bias', 0.0)))
      mapping[stats + ('var',)] = _take(f'{bn}/moving_variance')
  return mapping


def first_conv_to_grey(kernel: np.ndarray, mode: str = 'sum', channels: str = 'rgb') -> np.ndarray:
  """An HWIO kernel with 3 input channels -> 1, exact on grey images for 'sum'."""
  if mode == 'sum':
    return kernel.sum(axis=2, keepdims=True)
  if mode == 'luminance':
    weights = LUMINANCE_RGB if channels == 'rgb' else LUMINANCE_RGB[::-1]
    return np.einsum('hwio,i->hwo', kernel, weights)[:, :, None, :]
  raise FerJaxError(f'config.model.first_conv={mode!r} is not a way to make the first conv grey; '
                    f'use one of {", ".join(FIRST_CONV_MODES)}.')


def _first_conv_path(arch: str) -> tuple[str, ...]:
  return ('params', 'backbone', 'block1_conv1' if arch == 'vgg16' else 'conv1', 'kernel')


def import_backbone(variables: dict[str, Any], arch: str, path: str, first_conv: str = 'sum',
                    stride_in_1x1: bool = False) -> dict[str, Any]:
  """`variables` with every backbone array replaced by the file's; the head is untouched."""
  if arch not in ('vgg16', *RESNETS):
    raise FerJaxError(f'config.model.name={arch!r} has no ImageNet weights to import; use vgg16, '
                      'resnet18 or resnet50.')
  source, arrays = read_weight_file(path)
  if source == 'keras' and arch == 'resnet18':
    raise FerJaxError(f'{path} is a Keras file, and Keras has no ResNet-18; pass torchvision '
                      'resnet18 weights as .safetensors or .npz.')
  if source == 'keras' and arch == 'resnet50' and not stride_in_1x1:
    raise FerJaxError(f'{path} holds Keras ResNet-50 weights, which stride in the first 1x1 conv of '
                      'a stage; set config.model.stride_in_1x1=True.')
  mapping = _vgg16_mapping(source) if arch == 'vgg16' else _resnet_mapping(arch, source)
  flat = flax.traverse_util.flatten_dict(variables)
  first_conv_path = _first_conv_path(arch)
  loaded = {}
  for target, value in flat.items():
    if target[1] != 'backbone':
      continue
    if target not in mapping:
      raise FerJaxError(f'the {arch} model has {"/".join(target)}, which no {source} layer fills; '
                        'is this the right architecture?')
    name, read = mapping[target]
    if name not in arrays:
      kind = 'notop .h5 weights file' if source == 'keras' else 'state_dict'
      raise FerJaxError(f'{path} has no layer {name!r} (needed for {"/".join(target)}); pass '
                        f'{source} {arch} weights (the {kind} of that model).')
    array = np.asarray(read(arrays), np.float32)
    if target == first_conv_path and array.ndim == 4 and array.shape[2] == 3:
      array = first_conv_to_grey(array, first_conv, SOURCES[source]['channels'])
    if array.shape != np.shape(value):
      raise FerJaxError(f'{path}: layer {name!r} has shape {array.shape}, but {"/".join(target)} '
                        f'of the {arch} model expects {tuple(np.shape(value))}.')
    loaded[target] = array
  return flax.traverse_util.unflatten_dict({**flat, **loaded})
