"""The benchmark runs end to end on a small setting (no timing assertions), and the fast-CPU XLA
flag fer_jax sets by default changes no result beyond float tolerance."""
import ast
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


def test_bench_smoke(tmp_path):
  out = tmp_path / 'bench.json'
  result = subprocess.run(
      [sys.executable, '-m', 'fer_jax.bench', '--train_batch_sizes=8', '--infer_batch_sizes=8',
       '--steps=1', '--epoch_faces=64', '--epoch_fractions=1', '--steps_per_call=1', '--nobreakdown',
       '--scaling=2x1', '--scaling_batch=8', '--notorch', f'--json_out={out}'], capture_output=True,
      text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report['train_step']['8']['images_per_s'] > 0
  assert report['train_step']['8']['temp_mb'] > 0 and report['inference']['8']['total_mb'] > 0
  assert report['augmentation']['images_per_s'] > 0 and report['predictor']['single_face_ms'] > 0
  epochs = [(e['faces'], e['steps_per_call']) for e in report['epoch']]
  assert epochs == [(64, 1)]  # more fractions / steps per call are the same code, compiled again
  assert report['peak_rss_mb'] > 100
  assert report['inference_folded']['8']['images_per_s'] > 0
  assert '| train step | 8 |' in result.stdout and '| inference | 8 |' in result.stdout
  assert '| inference, BatchNorm folded | 8 |' in result.stdout
  assert 'epoch with augmentation (64 faces, 1 steps/call)' in result.stdout
  # A scaling row: two processes joined over 127.0.0.1, one device each.
  assert [(r['layout'], r['processes'], r['devices']) for r in report['scaling']] == [
      ('2x1', 2, 2)]
  assert all(r['images_per_s'] > 0 for r in report['scaling'])
  assert '| 2x1 |' in result.stdout


def test_fast_cpu_flag_changes_no_result(tmp_path):
  outputs = {}
  for fast in ('1', '0'):
    env = {**os.environ, 'FER_JAX_FAST_CPU': fast}
    env.pop('XLA_FLAGS', None)
    path = tmp_path / f'fast_{fast}.npz'
    subprocess.run([sys.executable, os.path.join('tests', 'fast_cpu_check.py'), str(path)],
                   check=True, cwd=REPO, env=env, capture_output=True)
    outputs[fast] = dict(np.load(path))
  assert 'ynn_fusion_type=dot' in str(outputs['1'].pop('xla_flags'))
  assert str(outputs['0'].pop('xla_flags')) == ''
  np.testing.assert_allclose(outputs['1']['loss_sum'], outputs['0']['loss_sum'], rtol=1e-5)
  np.testing.assert_allclose(outputs['1']['logits'], outputs['0']['logits'], rtol=1e-4, atol=1e-4)
  # The update of every weight tensor agrees to 1 % of its norm (measured: <= 0.4 %). Biases of
  # the convs and hidden dense layers are left out: the BatchNorm after each cancels them, so
  # their gradients are float noise (~1e-8).
  for name in set(outputs['1']) - {'logits', 'loss_sum'}:
    if name.endswith('bias') and ('/Conv_' in name or name.split('/')[-2] in
                                  ('Dense_0', 'Dense_1', 'Dense_2', 'Dense_3')):
      continue
    fast, default = outputs['1'][name], outputs['0'][name]
    assert np.linalg.norm(fast - default) <= 1e-2 * np.linalg.norm(default), name


def test_a_bad_scaling_layout_is_one_sentence_before_any_timing():
  result = subprocess.run([sys.executable, '-m', 'fer_jax.bench', '--scaling=1x1,2by1'],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
  assert result.returncode == 1
  assert result.stderr.strip() == ("error: --scaling names '2by1'; give PROCESSESxDEVICES layouts "
                                   'such as 1x1,1x2,2x1.')


def _bench(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'fer_jax.bench', *flags], capture_output=True,
                        text=True, cwd=REPO, timeout=60)  # the default timing takes minutes


@pytest.mark.parametrize('flags,missing', [((), 'torch'),
                                           (('--data=faces.csv',), 'torch and torchvision')])
def test_torch_missing_is_one_sentence_before_any_timing(tmp_path, flags, missing):
  import importlib.util
  if importlib.util.find_spec('torch') is not None:
    pytest.skip('torch is installed here; the missing-torch sentence cannot show')
  result = _bench(*flags, f'--json_out={tmp_path / "bench.json"}')
  assert result.returncode == 1 and result.stdout == ''
  assert result.stderr.strip() == (f'error: the PyTorch baselines need {missing}, which this '
                                   f'Python ({sys.executable}) lacks; pip install '
                                   '"fer_jax[bench]", or pass --notorch to time fer_jax alone.')
  assert not (tmp_path / 'bench.json').exists()


def _literal(path: pathlib.Path, name: str):
  """A module-level constant of a file, read without importing it (the baselines need torch)."""
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == name:
      return ast.literal_eval(node.value)
  raise AssertionError(f'{path} has no {name}')


def test_the_pytorch_baseline_is_the_model_fer_jax_trains():
  """fer_jax.bench_torch.reference builds cnn48 layer for layer: same blocks, same dropout."""
  from fer_jax.models import cnn48
  reference = REPO / 'fer_jax' / 'bench_torch' / 'reference.py'
  blocks = _literal(reference, 'CONV_BLOCKS')
  assert [b[:3] for b in blocks] == [tuple(b) for b in cnn48.CONV_BLOCKS]
  assert [b[3] for b in blocks] == pytest.approx([0.5 * s for s in cnn48.CONV_DROPOUT_SCALE])
  head = _literal(reference, 'HEAD')
  assert [w for w, _ in head] == list(cnn48.HEAD_WIDTHS)
  assert [r for _, r in head] == pytest.approx([0.5 * s for s in cnn48.HEAD_DROPOUT_SCALE])
  for path in (REPO / 'fer_jax' / 'bench_torch').glob('*.py'):  # PyTorch's side imports no JAX
    tree = ast.parse(path.read_text())
    imported = {alias.name.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split('.')[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {'jax', 'flax', 'optax'}, path


@pytest.mark.skipif(importlib.util.find_spec('torch') is None, reason='needs torch (fer_jax[bench])')
def test_the_pytorch_baseline_runs_and_counts_the_same_parameters():
  from fer_jax import models
  from configs import enhanced
  result = subprocess.run([sys.executable, '-m', 'fer_jax.bench_torch.reference', '--batch-size',
                           '4', '--steps', '1'], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['train_images_per_s'] > 0 and figures['eval_images_per_s'] > 0
  import jax
  variables = models.create_model(enhanced.get_config().model).init(
      jax.random.PRNGKey(0), np.zeros((1, 48, 48, 1), np.float32), train=False)
  assert figures['params'] == sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))


def test_data_without_training_rows_is_one_sentence_before_any_timing(tmp_path):
  from tests.conftest import random_rows, write_csv
  path = write_csv(tmp_path / 'private.csv', random_rows(2, usages=('PrivateTest',)))
  result = _bench(f'--data={path}', '--notorch')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: --data={path} has no Training rows to time; pass the full FER2013 CSV.')
