import functools
import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from configs import enhanced, smoke
from fer_jax import FerJaxError, augment, config_checks, models, optim, train
from fer_jax.checkpoint import BEST, LATEST, Checkpoints
from fer_jax.run_state import RunState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(state):
  return jax.device_get(state.params)


def test_optimizer_gives_each_group_its_own_rate_with_coupled_l2():
  config = enhanced.get_config()
  model = models.create_model(config.model)
  lr_fns = optim.create_learning_rate_fns(config, steps_per_epoch=10)
  state = train.create_train_state(jax.random.PRNGKey(0), model,
                                   optim.create_optimizer(config, lr_fns))
  grads = jax.tree_util.tree_map(lambda p: np.full(p.shape, 0.02, np.float32), state.params)
  apply = jax.jit(lambda s, g: s.apply_gradients(grads=g))
  new = apply(state, grads)
  delta = jax.tree_util.tree_map(lambda a, b: np.asarray(b - a), state.params, new.params)
  # Adam's first step moves every weight by lr * sign(g + wd * w): 1e-5 backbone, 1e-3 head.
  for group, lr in (('backbone', 1e-5), ('head', 1e-3)):
    moved = np.concatenate([d.ravel() for d in jax.tree_util.tree_leaves(delta[group])])
    np.testing.assert_allclose(np.abs(moved), lr, rtol=2e-2)  # float32 rounding near |w| = 1
  # Coupled L2: a weight with zero gradient still decays, in the direction of -w.
  zero = jax.tree_util.tree_map(np.zeros_like, grads)
  decayed = apply(state, zero).params['head']['Dense_0']['kernel']
  w = np.asarray(state.params['head']['Dense_0']['kernel'])
  big = np.abs(w) > 0.02  # where Adam's eps (1e-8) is negligible beside wd * |w|
  np.testing.assert_allclose((decayed - w)[big], -1e-3 * np.sign(w[big]), rtol=1e-2)


def test_learning_rate_halves_every_8_epochs():
  config = enhanced.get_config()
  fns = optim.create_learning_rate_fns(config, steps_per_epoch=100)
  assert float(fns['head'](799)) == pytest.approx(1e-3)
  assert float(fns['head'](800)) == pytest.approx(5e-4)
  assert float(fns['backbone'](1600)) == pytest.approx(2.5e-6)


def test_cosine_schedule_warms_up_then_decays_to_zero():
  config = enhanced.get_config()
  config.lr_schedule, config.warmup_epochs, config.num_epochs = 'cosine', 1.0, 5
  head = optim.create_learning_rate_fns(config, steps_per_epoch=100)['head']
  assert float(head(0)) == 0.0
  assert float(head(50)) == pytest.approx(5e-4)
  assert float(head(100)) == pytest.approx(1e-3)
  assert float(head(300)) == pytest.approx(5e-4)   # half-way through the 400 decay steps
  assert float(head(500)) == pytest.approx(0.0, abs=1e-12)


def test_plateau_lowers_the_rate_after_patience_epochs_without_a_better_accuracy():
  run = RunState()
  scales = []
  for epoch, accuracy in enumerate((0.30, 0.40, 0.40, 0.39, 0.41, 0.41, 0.41, 0.40, 0.40, 0.40), 1):
    run.epoch = epoch
    scales.append(run.update_plateau(accuracy, factor=0.5, patience=2, min_scale=0.2))
  assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2]
  assert run.plateau.best_score == 0.41 and run.plateau.best_epoch == 5
  assert RunState.from_json(json.loads(json.dumps(run.to_json()))) == run


def test_plateau_schedule_warms_up_and_its_factor_scales_both_groups():
  """Plain SGD (no momentum, no L2): the update is -lr * scale * g, the scale read from and set
  in the optimiser state, so it is checkpointed with it and needs no recompilation."""
  config = enhanced.get_config()
  config.optimizer, config.momentum, config.weight_decay = 'sgd', 0.0, 0.0
  config.lr_schedule, config.warmup_epochs, config.head_lr, config.backbone_lr = 'plateau', 1.0, 0.1, 0.01
  fns = optim.create_learning_rate_fns(config, steps_per_epoch=10)
  assert [float(fns['head'](t)) for t in (0, 5, 10, 1000)] == pytest.approx([0.0, 0.05, 0.1, 0.1])
  tx = optim.create_optimizer(config, fns)
  params = {'backbone': {'w': np.ones(2, np.float32)}, 'head': {'w': np.ones(1, np.float32)}}
  grads = jax.tree_util.tree_map(lambda p: 2 * p, params)
  state = tx.init(params)
  for _ in range(10):  # through the warm-up
    _, state = tx.update(grads, state, params)
  assert float(optim.plateau_scale(state)) == 1.0
  full, _ = tx.update(grads, state, params)
  halved, _ = jax.jit(tx.update)(grads, optim.with_plateau_scale(state, 0.5), params)
  np.testing.assert_allclose(full['head']['w'], [-0.2], rtol=1e-6)
  np.testing.assert_allclose(full['backbone']['w'], [-0.02, -0.02], rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, 0.5 * b, rtol=1e-6), halved, full)


def test_plateau_run_records_its_factor_in_history_state_and_checkpoint(tmp_path, generated_config):
  config = generated_config.copy_and_resolve_references()
  config.lr_schedule, config.plateau_patience, config.plateau_factor = 'plateau', 1, 0.5
  # Rates of 0 keep the weights, so epoch 2 scores exactly what epoch 1 did: a plateau.
  config.num_epochs, config.head_lr, config.backbone_lr = 2, 0.0, 0.0
  state = train.train_and_evaluate(config, str(tmp_path))
  first, second = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert second['eval_accuracy'] == first['eval_accuracy']
  assert first['lr_scale'] == second['lr_scale'] == 1.0  # epoch 1 is always a new best
  assert float(optim.plateau_scale(state.opt_state)) == 0.5  # what epoch 3 would train with
  meta = Checkpoints(str(tmp_path)).restore_meta(LATEST)
  assert meta['run']['lr_scale'] == 0.5
  assert meta['run']['plateau']['best_score'] == first['eval_accuracy']
  config.plateau_factor = 1.5
  with pytest.raises(FerJaxError, match=r'config.plateau_factor=1.5 is out of range'):
    config_checks.validate(config)


def test_sgd_with_nesterov_momentum_and_coupled_l2():
  """Two steps by hand: v = m v + g', update = -lr (g' + m v) with g' = g + wd w (PyTorch SGD)."""
  config = enhanced.get_config()
  config.optimizer, config.weight_decay = 'sgd', 0.01
  tx = optim.create_optimizer(config, {'backbone': lambda _: 0.1, 'head': lambda _: 0.1})
  params = {'backbone': {'w': np.array([1.0, -2.0], np.float32)},
            'head': {'w': np.array([0.5], np.float32)}}
  grads = {'backbone': {'w': np.array([0.3, 0.1], np.float32)},
           'head': {'w': np.array([-0.2], np.float32)}}
  opt_state = tx.init(params)
  w, velocity = params['backbone']['w'].astype(np.float64), 0.0
  for _ in range(2):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    g = grads['backbone']['w'] + 0.01 * w
    velocity = 0.9 * velocity + g
    w = w - 0.1 * (g + 0.9 * velocity)
    np.testing.assert_allclose(params['backbone']['w'], w, rtol=1e-6)


def test_label_smoothing_moves_the_target_off_one_hot():
  logits = np.array([[2.0, 0.0, -1.0]], np.float32)
  labels = np.array([0])
  plain = float(train.cross_entropy(logits, labels)[0])
  log_p = jax.nn.log_softmax(logits)[0]
  assert plain == pytest.approx(-float(log_p[0]), rel=1e-6)
  smoothed = float(train.cross_entropy(logits, labels, 0.3)[0])
  target = np.array([0.7 + 0.1, 0.1, 0.1])
  assert smoothed == pytest.approx(-float(np.dot(target, log_p)), rel=1e-6)


@pytest.mark.parametrize('field, value, message', [
    ('optimizer', 'adamw', "config.optimizer='adamw'"),
    ('lr_schedule', 'linear', "config.lr_schedule='linear'"),
    ('label_smoothing', 1.0, 'config.label_smoothing=1.0'),
    ('batch_size', 0, 'config.batch_size=0'),
    ('checkpoint_every_epochs', 0, 'config.checkpoint_every_epochs=0'),
])
def test_a_bad_training_field_is_named_before_any_work(tmp_path, field, value, message):
  config = enhanced.get_config()
  config[field] = value
  with pytest.raises(FerJaxError, match=message.replace('(', r'\(')):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_k_steps_in_one_call_equal_k_single_steps():
  """Same batches, keys and order: the 3-step update agrees to 1 % of its norm. SGD, and the
  BN-cancelled biases left out, as in tests/parallel_step_check.py: the one-call and one-by-one
  programs compile differently, and training amplifies float-level differences step to step."""
  config = enhanced.get_config()
  config.augment.steps = 'flip,rotate,noise'
  config.optimizer, config.backbone_lr, config.head_lr, config.momentum = 'sgd', 1e-3, 1e-3, 0.0
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fns(config, 10))
  state = train.create_train_state(jax.random.PRNGKey(0), model, tx)
  initial = jax.device_get(state.params)
  rng = np.random.default_rng(0)
  split = {'image': rng.integers(0, 256, (40, 48, 48, 1), dtype=np.uint8),
           'label': rng.integers(0, 7, 40).astype(np.int32)}
  indices = train.epoch_batches(0, 1, 40, 8)
  assert indices.shape == (5, 8) and len(set(np.asarray(indices).ravel())) == 40
  step_fn = functools.partial(train.train_step,
                              augment_fn=augment.make_train_augment(config.augment, 5))
  run = jax.jit(functools.partial(train.train_steps, step_fn=step_fn))
  together, sums_together = run(state, split, indices[:3])
  one_by_one, total = state, None
  for k in range(3):
    one_by_one, sums = run(one_by_one, split, indices[k:k + 1])
    total = sums if total is None else jax.tree_util.tree_map(np.add, total, sums)
  assert int(together.step) == int(one_by_one.step) == 3
  flat = lambda tree: flax.traverse_util.flatten_dict(jax.device_get(tree), sep='/')
  start, a, b = flat(initial), flat(together.params), flat(one_by_one.params)
  for name in start:
    if name.endswith('bias') and name.split('/')[-2] != 'Dense_4' and 'BatchNorm' not in name:
      continue
    update_a, update_b = a[name] - start[name], b[name] - start[name]
    assert np.linalg.norm(update_a - update_b) <= 1e-2 * np.linalg.norm(update_b), name
  np.testing.assert_allclose(sums_together['loss_sum'], total['loss_sum'], rtol=1e-3)
  assert float(sums_together['count']) == 24.0


def test_resume_continues_the_same_run(tmp_path, generated_config):
  straight = generated_config.copy_and_resolve_references()
  straight.num_epochs = 2
  state_straight = train.train_and_evaluate(straight, str(tmp_path / 'straight'))

  first = generated_config.copy_and_resolve_references()
  first.num_epochs = 1
  train.train_and_evaluate(first, str(tmp_path / 'resumed'))
  state_resumed = train.train_and_evaluate(straight, str(tmp_path / 'resumed'))

  assert int(state_resumed.step) == int(state_straight.step) == 4
  jax.tree_util.tree_map(np.testing.assert_array_equal, _params(state_straight),
                         _params(state_resumed))
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state_straight.batch_stats),
                         jax.device_get(state_resumed.batch_stats))
  history = [json.loads(l) for l in open(tmp_path / 'resumed' / 'metrics.jsonl')]
  assert [h['epoch'] for h in history] == [1, 2]
  straight_history = [json.loads(l) for l in open(tmp_path / 'straight' / 'metrics.jsonl')]
  assert [h['train_loss'] for h in history] == [h['train_loss'] for h in straight_history]

  # The checkpoint carries what a user needs to resume or serve the model.
  checkpoints = Checkpoints(str(tmp_path / 'resumed'))
  meta = checkpoints.restore_meta(LATEST)
  assert meta['run']['epoch'] == 2 and meta['run']['history'] == history
  assert meta['model_config']['name'] == 'cnn48' and meta['train_config']['batch_size'] == 32
  assert meta['label_map'] == {'0': 'angry', '1': 'disgust', '2': 'fear', '3': 'happy',
                               '4': 'sad', '5': 'surprise', '6': 'neutral'}
  assert set(meta['run']) == {'epoch', 'best', 'plateau', 'lr_scale', 'history'}
  best_run = checkpoints.restore_meta(BEST)['run']
  assert best_run['best']['best_epoch'] == best_run['epoch']
  summary = open(tmp_path / 'resumed' / 'model_summary.txt').read()
  assert '6,673,127' in summary and '9 dropout' in summary


def test_early_stopping_counts_epochs_without_improvement():
  run = RunState()
  assert run.best.update(1, 0.5) and not run.should_stop(patience=2)
  assert not run.best.update(2, 0.5)
  assert not run.should_stop(patience=2)
  assert not run.best.update(3, 0.4)
  assert run.should_stop(patience=2) and run.best.best_epoch == 1
  assert not run.should_stop(patience=0)  # 0: never stop


def test_latest_checkpoint_every_n_epochs_and_at_the_end():
  config = enhanced.get_config()
  config.num_epochs, config.checkpoint_every_epochs = 12, 5
  config.early_stopping_patience = 1
  running = RunState()
  running.best.update(1, 0.5)
  assert [e for e in range(1, 13) if train.saves_latest(e, config, running)] == [5, 10, 12]
  stopping = RunState()
  stopping.best.update(1, 0.5)
  stopping.best.update(2, 0.4)  # no improvement: the run stops after this epoch, so it is saved
  assert stopping.should_stop(1) and train.saves_latest(2, config, stopping)
  config.checkpoint_every_epochs = 1
  assert all(train.saves_latest(e, config, running) for e in range(1, 13))


def test_batch_that_does_not_divide_across_devices_is_an_error():
  script = (
      'from fer_jax import parallel, FerJaxError\n'
      'mesh = parallel.make_mesh()\n'
      'try:\n'
      '    parallel.check_divisible(30, mesh, "config.batch_size")\n'
      'except FerJaxError as e:\n'
      '    print(e)\n')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert 'config.batch_size=30 does not divide across 4 devices; set it to a multiple of 4.' in out.stdout


def test_one_step_on_four_devices_matches_one_device():
  out = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'parallel_step_check.py')],
                       capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'devices=4 match=True' in out.stdout, out.stdout


def test_cli_without_data_says_where_to_put_it(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'FER2013_PATH'}
  env['TFDS_DATA_DIR'] = str(tmp_path / 'tfds')
  out = subprocess.run([sys.executable, '-m', 'fer_jax.main', '--config', 'configs/smoke.py',
                        '--workdir', str(tmp_path / 'run')], capture_output=True, text=True,
                       cwd=REPO, env=env)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: FER2013 was not found') and 'fer2013.csv' in last
  assert 'configs/smoke.py' in last and 'Traceback' not in out.stderr


def test_learns_on_real_faces(tmp_path, real_csv, real_tfds_dir):
  """A short run on real faces lowers the training loss and beats the majority class (24.9 %).

  From scratch, the reference's 1e-5 backbone rate, heavy dropout and full augmentation need many epochs
  to leave the majority class, so this short run uses 1e-3 for both groups, light dropout and flips.
  """
  config = smoke.get_config()
  config.data.csv_path, config.data.tfds_dir = real_csv, real_tfds_dir
  config.data.max_train_examples = 1536
  config.data.max_eval_examples = 512
  config.bn_recalibration_faces = 512
  config.model.dropout_rate = 0.1
  config.augment.steps = 'flip'
  config.num_epochs = 2
  config.progress_bar = False
  train.train_and_evaluate(config, str(tmp_path))
  history = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  print([(round(h['train_loss'], 4), round(h['eval_accuracy'], 4)) for h in history])
  assert history[-1]['train_loss'] < history[0]['train_loss'] - 0.03
  assert max(h['eval_accuracy'] for h in history) > 0.249 + 0.02
