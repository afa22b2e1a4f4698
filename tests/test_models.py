import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import enhanced
from fer_jax import models, optim
from fer_jax.models import cnn48


@pytest.fixture(scope='module')
def model_and_variables():
  model = models.create_model(enhanced.get_config().model)
  return model, models.init_variables(model, jax.random.key(0))


def _faces(batch: int = 4):
  return jax.random.uniform(jax.random.key(1), (batch, 48, 48, 1), minval=-1, maxval=1)


def test_output_shape(model_and_variables):
  model, variables = model_and_variables
  logits = model.apply(variables, _faces(5), train=False)
  assert logits.shape == (5, 7) and logits.dtype == jnp.float32


def test_param_count_matches_closed_form(model_and_variables):
  _, variables = model_and_variables
  count = models.count_params(variables['params'])
  assert count == cnn48.closed_form_param_count() == 6_673_127  # torch_reference.py prints the same


def test_layer_counts(model_and_variables):
  model, variables = model_and_variables
  assert models.layer_counts(model, variables) == {
      'conv': 12, 'batchnorm': 16, 'pool': 5, 'dense': 5, 'dropout': 9}
  assert len(jax.tree_util.tree_leaves(variables['batch_stats'])) == 16 * 2  # mean + var per BN
  summary = models.summary(model, variables)
  assert '6,673,127' in summary and '12 conv, 16 batchnorm, 5 pool, 5 dense, 9 dropout' in summary


def test_dropout_rates_follow_the_seed():
  model = cnn48.EnhancedCNN48(dropout_rate=0.5)
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, cnn48.nn.Dropout):
      rates.append((round(context.module.rate, 4), context.module.broadcast_dims))
    return next_fun(*args, **kwargs)
  with cnn48.nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init_with_output(
        {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, _faces(2), train=True))
  assert rates == [(0.1, (1, 2)), (0.125, (1, 2)), (0.15, (1, 2)), (0.175, (1, 2)), (0.2, (1, 2)),
                   (0.5, ()), (0.35, ()), (0.25, ()), (0.15, ())]


def test_dropout_key_controls_the_mask(model_and_variables):
  model, variables = model_and_variables

  def forward(key):
    return model.apply(variables, _faces(), train=True, rngs={'dropout': key},
                       mutable=['batch_stats'])[0]
  same_a, same_b = forward(jax.random.key(3)), forward(jax.random.key(3))
  other = forward(jax.random.key(4))
  np.testing.assert_array_equal(same_a, same_b)
  assert not np.allclose(same_a, other)


def test_evaluation_is_deterministic_and_keeps_batch_stats(model_and_variables):
  model, variables = model_and_variables
  first = model.apply(variables, _faces(), train=False)
  second = model.apply(variables, _faces(), train=False)
  np.testing.assert_array_equal(first, second)
  _, updates = model.apply(variables, _faces(), train=False, mutable=['batch_stats'])
  jax.tree_util.tree_map(np.testing.assert_array_equal, updates['batch_stats'],
                         variables['batch_stats'])
  # ...whereas a training pass does move them, so the check above can fail.
  _, train_updates = model.apply(variables, _faces(), train=True, mutable=['batch_stats'],
                                 rngs={'dropout': jax.random.key(0)})
  moved = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), train_updates['batch_stats'],
                                 variables['batch_stats'])
  assert all(jax.tree_util.tree_leaves(moved))


def test_param_labels_split_backbone_and_head(model_and_variables):
  _, variables = model_and_variables
  labels = jax.tree_util.tree_leaves_with_path(optim.param_labels(variables['params']))
  by_layer = {}
  for path, label in labels:
    layer = '/'.join(str(k.key) for k in path[:2])
    by_layer.setdefault(label, set()).add(layer)
  assert {l.split('/')[1].split('_')[0] for l in by_layer['backbone']} == {'Conv', 'BatchNorm'}
  assert {l.split('/')[1].split('_')[0] for l in by_layer['head']} == {'Dense', 'BatchNorm'}
  assert len([l for l in by_layer['backbone'] if 'Conv' in l]) == 12
  assert len([l for l in by_layer['head'] if 'Dense' in l]) == 5


def test_unknown_model_name_is_a_clear_error():
  config = enhanced.get_config().model
  config.name = 'resnet9000'
  with pytest.raises(ValueError, match=r"config.model.name='resnet9000'.*use one of \['cnn48', 'resnet18', 'resnet50', 'vgg16', 'vgg16_224_rgb'\]"):
    models.create_model(config)
