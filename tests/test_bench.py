"""The benchmark runs end to end on a small setting (no timing assertions), and the fast-CPU XLA
flag fer_jax sets by default changes no result beyond float tolerance."""
import json
import os
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
       '--scaling=2x1', '--scaling_batch=8', f'--json_out={out}'], capture_output=True, text=True, cwd=REPO)
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


def test_a_torch_dir_that_cannot_run_is_one_sentence_before_any_timing(tmp_path):
  result = _bench('--torch_dir=/no/such/dir', f'--json_out={tmp_path / "bench.json"}')
  assert result.returncode == 1 and result.stdout == ''
  assert result.stderr.strip() == ('error: --torch_dir=/no/such/dir is not a folder; pass the '
                                   'folder holding torch_reference.py and torch_seed_pipeline.py, '
                                   'or run without --torch_dir.')
  assert not (tmp_path / 'bench.json').exists()
  result = _bench(f'--torch_dir={tmp_path}')
  assert result.returncode == 1
  assert result.stderr.strip() == (f'error: --torch_dir={tmp_path} has no torch_reference.py; pass '
                                   'the folder holding the PyTorch baseline scripts, or run without '
                                   '--torch_dir.')
  (tmp_path / 'torch_reference.py').write_text('')
  result = _bench(f'--torch_dir={tmp_path}', f'--data={tmp_path / "faces.csv"}')  # + the pipeline
  assert result.returncode == 1
  assert result.stderr.strip().startswith(f'error: --torch_dir={tmp_path} has no '
                                          'torch_seed_pipeline.py; ')


def test_torch_missing_says_how_to_install_it_before_any_timing(tmp_path):
  import importlib.util
  if importlib.util.find_spec('torch') is not None:
    pytest.skip('torch is installed here; the missing-torch sentence cannot show')
  for name in ('torch_reference.py', 'torch_seed_pipeline.py'):
    (tmp_path / name).write_text('')
  result = _bench(f'--torch_dir={tmp_path}')
  assert result.returncode == 1 and result.stdout == ''
  assert result.stderr.strip() == (f'error: --torch_dir needs torch, which this Python '
                                   f'({sys.executable}) lacks; pip install "fer_jax[bench]", or run '
                                   'without --torch_dir.')


def test_data_without_training_rows_is_one_sentence_before_any_timing(tmp_path):
  from tests.conftest import random_rows, write_csv
  path = write_csv(tmp_path / 'private.csv', random_rows(2, usages=('PrivateTest',)))
  result = _bench(f'--data={path}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: --data={path} has no Training rows to time; pass the full FER2013 CSV.')
