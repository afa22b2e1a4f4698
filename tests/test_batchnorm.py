"""BatchNorm statistics re-measured on clean faces: population moments, stored by training."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import enhanced
from fer_jax import FerJaxError, augment, batchnorm, models, train
from fer_jax.checkpoint import LATEST, Checkpoints
from fer_jax.predict import Predictor


def _assert_first_layer_has_population_moments(model, variables, faces, stats):
  """The first BatchNorm's input is the first conv's output, which no statistics touch: its
  population mean and (biased) variance over all the faces, by numpy, must come back exactly."""
  conv_out = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.path == ('backbone', 'Conv_0') and context.method_name == '__call__':
      conv_out['x'] = np.asarray(out, np.float64)
    return out
  with nn.intercept_methods(record):
    model.apply(variables, augment.normalize(faces), train=False)
  first = stats['backbone']['BatchNorm_0']
  np.testing.assert_allclose(first['mean'], conv_out['x'].mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(first['var'], conv_out['x'].var((0, 1, 2)), rtol=1e-4, atol=1e-7)


def test_recalibrate_gives_population_moments_over_all_batches():
  config = enhanced.get_config()
  model = models.create_model(config.model)
  variables = jax.device_get(models.init_variables(model, jax.random.PRNGKey(0)))
  faces = np.random.default_rng(0).integers(0, 256, (96, 48, 48, 1), dtype=np.uint8)
  stats = batchnorm.recalibrate(config.model, variables, jnp.asarray(faces), batch_size=32)

  _assert_first_layer_has_population_moments(model, variables, faces, stats)

  # Every one of the 16 layers is re-measured, and three batches differ from one of them.
  flat = flax.traverse_util.flatten_dict(stats)
  assert len(flat) == 32 and all(np.all(np.asarray(v)[..., :] >= 0) for k, v in flat.items()
                                 if k[-1] == 'var')
  one_batch = batchnorm.recalibrate(config.model, variables, jnp.asarray(faces[:32]), batch_size=32)
  assert not np.allclose(one_batch['head']['BatchNorm_3']['mean'], stats['head']['BatchNorm_3']['mean'])


def test_training_stores_the_recalibrated_statistics(tmp_path, generated_config):
  generated_config.num_epochs = 1
  generated_config.bn_recalibration_faces = 48
  state = train.train_and_evaluate(generated_config, str(tmp_path))
  checkpoints = Checkpoints(str(tmp_path))
  tree, _ = checkpoints.restore(LATEST, jax.device_get(train._state_tree(state)))
  from fer_jax import data
  split = data.load_split(generated_config.data, 'train')
  expected = batchnorm.recalibrate(generated_config.model,
                                   {'params': tree['params'], 'batch_stats': tree['batch_stats']},
                                   jnp.asarray(split.images[:48]), batch_size=32)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         tree['batch_stats'], jax.device_get(expected))


def test_folded_batchnorm_serves_the_same_logits():
  config = enhanced.get_config()
  model = models.create_model(config.model)
  variables = jax.device_get(models.init_variables(model, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)
  flat = flax.traverse_util.flatten_dict(variables)
  for path, value in flat.items():  # statistics and affine terms far from the identity
    draw = {'mean': lambda s: rng.normal(0, 0.3, s), 'var': lambda s: rng.uniform(0.3, 3.0, s),
            'scale': lambda s: rng.uniform(0.5, 1.5, s)}.get(path[-1])
    if draw is not None or (path[-1] == 'bias' and 'BatchNorm' in path[-2]):
      flat[path] = (draw or (lambda s: rng.normal(0, 0.2, s)))(value.shape).astype(np.float32)
  variables = flax.traverse_util.unflatten_dict(flat)
  raw_faces = rng.integers(0, 256, (8, 48, 48, 1)).astype(np.uint8)
  faces = augment.normalize(raw_faces)
  expected = model.apply(variables, faces, train=False)
  folded = batchnorm.fold(variables)
  assert not [p for p in flax.traverse_util.flatten_dict(folded) if 'BatchNorm' in '/'.join(p)]
  got = models.create_model(config.model, folded_batchnorm=True).apply(folded, faces)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  predictor = Predictor(config.model.to_dict(), variables, fold_batchnorm=True, tta='none')
  np.testing.assert_allclose(predictor.probabilities(raw_faces),
                             jax.nn.softmax(expected), atol=1e-5)
  # Folding is EnhancedCNN48's; asking it of another model is an error, not a silent no-op.
  transfer_config = {**config.model.to_dict(), 'name': 'vgg16'}
  with pytest.raises(FerJaxError, match="fold_batchnorm=True serves only model.name=cnn48, not 'vgg16'"):
    Predictor(transfer_config, variables, fold_batchnorm=True)


def test_recalibrate_weighs_the_faces_past_the_last_whole_batch():
  config = enhanced.get_config()
  model = models.create_model(config.model)
  variables = jax.device_get(models.init_variables(model, jax.random.PRNGKey(0)))
  faces = np.random.default_rng(1).integers(0, 256, (300, 48, 48, 1), dtype=np.uint8)
  stats = batchnorm.recalibrate(config.model, variables, jnp.asarray(faces), batch_size=256)
  _assert_first_layer_has_population_moments(model, variables, faces, stats)
  # Deeper layers see batch-normalised inputs, so each batch has its own moments: 256 faces and
  # the 44 past them, each weighed by its share of the 300.
  whole = batchnorm.recalibrate(config.model, variables, jnp.asarray(faces[:256]), batch_size=256)
  rest = batchnorm.recalibrate(config.model, variables, jnp.asarray(faces[256:]), batch_size=44)

  def weighed(layer_stats, whole_layer, rest_layer):
    mean = (256 * whole_layer['mean'] + 44 * rest_layer['mean']) / 300
    second = (256 * (whole_layer['var'] + whole_layer['mean'] ** 2)
              + 44 * (rest_layer['var'] + rest_layer['mean'] ** 2)) / 300
    np.testing.assert_allclose(layer_stats['mean'], mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer_stats['var'], second - mean ** 2, rtol=1e-3, atol=1e-5)
  is_layer = lambda node: isinstance(node, dict) and 'mean' in node
  jax.tree_util.tree_map(weighed, stats, whole, rest, is_leaf=is_layer)
  assert not np.allclose(whole['head']['BatchNorm_3']['mean'], stats['head']['BatchNorm_3']['mean'],
                         rtol=1e-4)
