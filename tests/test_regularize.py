"""Mixup, cutmix, random erasing and class weights: what each does to a batch and its targets,
and a train step that uses them."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import enhanced
from fer_jax import FerJaxError, augment, config_checks, models, optim, regularize, train


def _batch(seed=0, size=8):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(-1, 1, (size, 48, 48, 1)).astype(np.float32))
  labels = np.arange(size) % 7
  return images, jax.nn.one_hot(labels, 7), labels


def test_mixup_mixes_images_and_targets_with_one_weight():
  images, targets, labels = _batch()
  mixed, soft = regularize.mixup(images, targets, jax.random.PRNGKey(3), alpha=0.4)
  lam = float(soft[1, labels[1]])  # face 1 (label 1) and its partner, face 6 (label 6)
  assert 0 < lam < 1
  np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)


def test_cutmix_targets_match_the_pasted_share_of_pixels():
  images, targets, labels = _batch(1)
  for seed in range(5):
    mixed, soft = regularize.cutmix(images, targets, jax.random.PRNGKey(seed), alpha=1.0)
    from_partner = np.asarray(mixed[1] == images[-2]) & np.asarray(mixed[1] != images[1])
    share = from_partner.mean()
    np.testing.assert_allclose(float(soft[1, labels[-2]]), share, atol=1e-6)
    np.testing.assert_allclose(float(soft[1, labels[1]]), 1 - share, atol=1e-6)
    rows, cols = np.nonzero(from_partner[..., 0])
    if len(rows):  # one rectangle
      assert from_partner[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_random_erasing_replaces_one_rectangle_per_face():
  images, _, _ = _batch(2, size=16)
  erased = np.asarray(regularize.random_erase(images, jax.random.PRNGKey(0), prob=1.0))
  for face, original in zip(erased, np.asarray(images)):
    changed = (face != original)[..., 0]
    rows, cols = np.nonzero(changed)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert changed.sum() == box  # a filled rectangle
    assert 0.015 * 2304 <= box <= 0.27 * 2304
    assert face.min() >= -1 and face.max() <= 1
  untouched = regularize.random_erase(images, jax.random.PRNGKey(0), prob=0.0)
  np.testing.assert_array_equal(untouched, images)


def test_class_weights_are_inverse_frequency_with_mean_one():
  labels = np.array([0] * 60 + [1] * 5 + [2] * 35)
  weights = regularize.class_weights(labels, 3, power=1.0)
  np.testing.assert_allclose(weights[labels].mean(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(weights[1] / weights[0], 12.0, rtol=1e-6)
  np.testing.assert_allclose(regularize.class_weights(labels, 3, 0.0), 1.0)
  with pytest.raises(FerJaxError, match=r'class_weighting=1.0 .*classes \[3\] have no face'):
    regularize.class_weights(labels, 4, power=1.0)


def test_config_checks_name_the_field():
  config = enhanced.get_config()
  config.random_erasing = 1.5
  with pytest.raises(FerJaxError, match=r'config.random_erasing=1.5 is a probability'):
    config_checks.validate(config)
  config = enhanced.get_config()
  config.mixup_alpha = -0.2
  with pytest.raises(FerJaxError, match=r'config.mixup_alpha=-0.2 is negative'):
    config_checks.validate(config)


def state_and_batch(config, seed: int):
  """A fresh train state for `config` and 8 random faces labelled 0..6, 0."""
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fns(config, 10))
  state = train.create_train_state(jax.random.PRNGKey(0), model, tx)
  rng = np.random.default_rng(seed)
  batch = {'image': jnp.asarray(rng.integers(0, 256, (8, 48, 48, 1), dtype=np.uint8)),
           'label': jnp.asarray(np.arange(8) % 7, jnp.int32)}
  return state, batch


def test_train_step_with_mixing_and_class_weights_uses_soft_weighted_targets():
  config = enhanced.get_config()
  config.backbone_lr = config.head_lr = 1e-3
  config.augment.steps = ''
  config.mixup_alpha, config.cutmix_alpha = 0.4, 1.0
  state, batch = state_and_batch(config, seed=0)
  augment_fn = augment.make_train_augment(config.augment, 10)
  weights = jnp.asarray(np.linspace(0.5, 2.0, 7), jnp.float32)
  step = jax.jit(functools.partial(train.train_step, augment_fn=augment_fn,
                                   mix_fn=regularize.make_mix_fn(config), class_weights=weights))
  plain = jax.jit(functools.partial(train.train_step, augment_fn=augment_fn))
  _, mixed_sums = step(state, batch)
  _, plain_sums = plain(state, batch)
  assert np.isfinite(float(mixed_sums['loss_sum']))
  assert float(mixed_sums['loss_sum']) != pytest.approx(float(plain_sums['loss_sum']), rel=1e-3)
  # Weights of 1 and no mixing reproduce the plain step's loss.
  ones = jax.jit(functools.partial(train.train_step, augment_fn=augment_fn,
                                   class_weights=jnp.ones(7, jnp.float32)))
  np.testing.assert_allclose(float(ones(state, batch)[1]['loss_sum']),
                             float(plain_sums['loss_sum']), rtol=1e-5)


def test_class_weights_scale_each_face_loss_in_the_train_step():
  config = enhanced.get_config()
  config.augment.steps = ''
  state, batch = state_and_batch(config, seed=1)
  augment_fn = augment.make_train_augment(config.augment, 10)

  def loss_sum(class_weights):
    step = jax.jit(functools.partial(train.train_step, augment_fn=augment_fn,
                                     class_weights=class_weights))
    return float(step(state, batch)[1]['loss_sum'])
  plain = loss_sum(None)
  assert plain > 0
  np.testing.assert_allclose(loss_sum(jnp.full(7, 2.0, jnp.float32)), 2 * plain, rtol=1e-5)
  assert loss_sum(jnp.zeros(7, jnp.float32)) == 0.0
  # Weight on one class only: the loss is that class's faces' share, so it lies strictly between.
  only_happy = loss_sum(jnp.asarray(np.eye(7)[3], jnp.float32))
  assert 0.0 < only_happy < plain


def test_weight_average_follows_its_recurrence_and_serves_from_checkpoints(tmp_path):
  from fer_jax.checkpoint import LATEST, Checkpoints, load_for_inference
  config = enhanced.get_config()
  config.augment.steps = ''
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fns(config, 10))
  state = train.create_train_state(jax.random.PRNGKey(0), model, tx, ema=True)
  step = jax.jit(functools.partial(train.train_step, ema_decay=0.9,
                                   augment_fn=augment.make_train_augment(config.augment, 10)))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.integers(0, 256, (8, 48, 48, 1), dtype=np.uint8)),
           'label': jnp.asarray(np.arange(8) % 7, jnp.int32)}
  expected = jax.device_get(state.params)
  for t in range(3):
    state, _ = step(state, batch)
    decay = min(0.9, (1 + t + 1) / (10 + t + 1))
    expected = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, expected,
                                      jax.device_get(state.params))
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
                         jax.device_get(state.ema_params), expected)

  # A checkpoint of a run with the average serves the averaged params.
  checkpoints = Checkpoints(str(tmp_path))
  checkpoints.save(LATEST, 3, jax.device_get(train._state_tree(state)), {'epoch': 1})
  checkpoints.close()
  served, _ = load_for_inference(str(tmp_path), 'latest')
  jax.tree_util.tree_map(np.testing.assert_array_equal, served['params'],
                         jax.device_get(state.ema_params))
  differs = jax.tree_util.tree_map(lambda a, b: bool((np.asarray(a) != np.asarray(b)).any()),
                                   served['params'], jax.device_get(state.params))
  assert any(jax.tree_util.tree_leaves(differs))


def test_the_train_loss_logged_is_plain_cross_entropy_whatever_the_objective():
  """ce_sum (logged as train_loss) is the cross-entropy evaluation reports; loss_sum the
  objective. Label smoothing changes the second only: the logits are the same."""
  config = enhanced.get_config()
  config.augment.steps = ''
  state, batch = state_and_batch(config, seed=2)
  augment_fn = augment.make_train_augment(config.augment, 10)
  plain = jax.jit(functools.partial(train.train_step, augment_fn=augment_fn))(state, batch)[1]
  smoothed = jax.jit(functools.partial(train.train_step, augment_fn=augment_fn,
                                       label_smoothing=0.3))(state, batch)[1]
  np.testing.assert_allclose(float(plain['ce_sum']), float(plain['loss_sum']), rtol=1e-5)
  np.testing.assert_allclose(float(smoothed['ce_sum']), float(plain['loss_sum']), rtol=1e-5)
  assert float(smoothed['loss_sum']) != pytest.approx(float(smoothed['ce_sum']), rel=1e-3)
