import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import enhanced, smoke
from fer_jax import FerJaxError, models, optim, train
from fer_jax.checkpoint import BEST, LATEST, Checkpoints

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
  assert meta['epoch'] == 2 and len(meta['history']) == 2
  assert meta['model_config']['name'] == 'cnn48' and meta['train_config']['batch_size'] == 32
  assert meta['label_map'] == {'0': 'angry', '1': 'disgust', '2': 'fear', '3': 'happy',
                               '4': 'sad', '5': 'surprise', '6': 'neutral'}
  assert set(meta['early_stopping']) == {'patience', 'best_accuracy', 'best_epoch',
                                         'epochs_without_improvement'}
  best_meta = checkpoints.restore_meta(BEST)
  assert best_meta['early_stopping']['best_epoch'] == best_meta['epoch']
  summary = open(tmp_path / 'resumed' / 'model_summary.txt').read()
  assert '6,673,127' in summary and '9 dropout' in summary


def test_early_stopping_counts_epochs_without_improvement():
  stopper = train.EarlyStopping(patience=2)
  assert stopper.update(1, 0.5) and not stopper.should_stop
  assert not stopper.update(2, 0.5)
  assert not stopper.should_stop
  assert not stopper.update(3, 0.4)
  assert stopper.should_stop and stopper.best_epoch == 1


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

  From scratch, the seed's 1e-5 backbone rate, heavy dropout and full augmentation need many epochs
  to leave the majority class, so this short run uses 1e-3 for both groups, light dropout and flips.
  """
  config = smoke.get_config()
  config.data.csv_path, config.data.tfds_dir = real_csv, real_tfds_dir
  config.data.max_train_examples = 1536
  config.data.max_eval_examples = 768
  config.model.dropout_rate = 0.1
  config.augment.steps = 'flip'
  config.num_epochs = 3
  config.progress_bar = False
  train.train_and_evaluate(config, str(tmp_path))
  history = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  print([(round(h['train_loss'], 4), round(h['eval_accuracy'], 4)) for h in history])
  assert history[-1]['train_loss'] < history[0]['train_loss'] - 0.03
  assert max(h['eval_accuracy'] for h in history) > 0.249 + 0.02
