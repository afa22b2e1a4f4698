"""Model registry and the model summary every run prints and saves."""
import collections
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fer_jax import FerJaxError
from fer_jax.models.cnn48 import EnhancedCNN48, MaxPool2x2, GlobalAvgPool, closed_form_param_count
from fer_jax.models.transfer import TransferNet, UpsampledVGG16

# config.model.name -> module; the transfer names are also TransferNet's `arch`.
MODELS: dict[str, type[nn.Module]] = {
    'cnn48': EnhancedCNN48, 'vgg16': TransferNet, 'resnet18': TransferNet, 'resnet50': TransferNet,
    'vgg16_224_rgb': UpsampledVGG16}
IMAGE_SHAPE = (48, 48, 1)

# Layer kinds the summary counts, by the module class that implements them.
_LAYER_KINDS = {nn.Conv: 'conv', nn.BatchNorm: 'batchnorm', MaxPool2x2: 'pool',
                GlobalAvgPool: 'pool', nn.Dense: 'dense', nn.Dropout: 'dropout'}


def create_model(model_config: ml_collections.ConfigDict, **overrides: Any) -> nn.Module:
  """Builds the module named by `model_config.name` with the config's fields (and overrides,
  e.g. dropout_rate=0 and bn_momentum=0 to measure BatchNorm statistics)."""
  if model_config.name not in MODELS:
    raise FerJaxError(f'config.model.name={model_config.name!r} is not a known model; '
                     f'use one of {sorted(MODELS)}.')
  module = MODELS[model_config.name]
  declared = module.__dataclass_fields__
  # Model-specific fields (stride_in_1x1, input_size) come from the config when the module has them.
  fields = {key: value for key, value in model_config.items() if key in declared and key != 'name'}
  fields['dtype'] = jnp.dtype(model_config.dtype)
  if 'arch' in declared:
    fields['arch'] = model_config.name
  return module(**{**fields, **overrides})


def init_variables(model: nn.Module, key: jax.Array) -> dict[str, Any]:
  """Initial {'params', 'batch_stats'} for a (1, 48, 48, 1) input (batch_stats {} without BN)."""
  variables = jax.jit(lambda k: model.init({'params': k}, jnp.zeros((1, *IMAGE_SHAPE)),
                                           train=False))(key)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def layer_counts(model: nn.Module, variables: dict[str, Any]) -> dict[str, int]:
  """Counts the layers a training forward pass actually calls, by kind."""
  counts: collections.Counter = collections.Counter()

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      for cls, kind in _LAYER_KINDS.items():
        if isinstance(context.module, cls):
          counts[kind] += 1
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, *IMAGE_SHAPE)), train=True,
                                         rngs={'dropout': jax.random.key(0)},
                                         mutable=['batch_stats']), variables)
  return {kind: counts[kind] for kind in ('conv', 'batchnorm', 'pool', 'dense', 'dropout')}


def summary(model: nn.Module, variables: dict[str, Any]) -> str:
  """A few lines: parameter counts per group and layer counts."""
  params = variables['params']
  lines = [f'model: {type(model).__name__} (dropout_rate={model.dropout_rate}, '
           f'classes={model.num_classes}, dtype={jnp.dtype(model.dtype).name})',
           f'parameters: {count_params(params):,} '
           + ' '.join(f'({name}: {count_params(group):,})' for name, group in params.items()),
           'layers: ' + ', '.join(f'{n} {kind}' for kind, n in layer_counts(model, variables).items())]
  return '\n'.join(lines)


__all__ = ['EnhancedCNN48', 'TransferNet', 'UpsampledVGG16', 'MODELS', 'IMAGE_SHAPE', 'create_model', 'init_variables',
           'count_params', 'layer_counts', 'summary', 'closed_form_param_count']
