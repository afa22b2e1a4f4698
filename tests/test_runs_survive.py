"""Runs that survive: killed at any save, the same run comes back with its best checkpoint intact;
one run per workdir; readers never see a half-written step; environment faults and nonsense
values are one sentence; nothing is left behind."""
import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import generated_smoke_config, random_rows, write_csv
from fer_jax import FerJaxError, checkpoint, config_checks, data, metrics, train
from fer_jax.checkpoint import BEST, LATEST

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _killed_run(workdir, *args: str) -> subprocess.CompletedProcess:
  """tests/killed_run.py on `workdir` with its arguments: N:WHEN (a kill) and FIELD=VALUE."""
  return subprocess.run([sys.executable, os.path.join(HERE, 'killed_run.py'), str(workdir), *args],
                        capture_output=True, text=True, cwd=REPO)


def _leftovers(workdir) -> list[str]:
  return glob.glob(os.path.join(str(workdir), 'checkpoints', '*', '*tmp*'))


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
  """The uninterrupted run: saves 1 best/4, 2 latest/4, 3 best/8, 4 latest/8, 5 latest/12."""
  workdir = tmp_path_factory.mktemp('reference')
  out = _killed_run(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert [line for line in out.stdout.splitlines() if line.startswith('save')] == [
      'save 1 best 4', 'save 2 latest 4', 'save 3 best 8', 'save 4 latest 8', 'save 5 latest 12']
  return workdir


def _without_timings(run: dict) -> dict:
  timings = ('epoch_seconds', 'train_images_per_second')
  return {**run, 'history': [{k: v for k, v in r.items() if k not in timings} for r in run['history']]}


# Killed while epoch 2's best is written; after it is committed but before the latest is; while
# epoch 2's latest is written.
@pytest.mark.parametrize('kill', ['3:during', '3:after', '4:during'])
def test_a_run_killed_at_a_save_resumes_to_the_same_run_and_best(tmp_path, reference_run, kill):
  killed = _killed_run(tmp_path, kill)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  if kill.endswith('during'):
    assert _leftovers(tmp_path), 'the kill did not fall inside a save'
  resumed = _killed_run(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert not _leftovers(tmp_path), 'a half-written step was left behind'
  for which in (LATEST, BEST):
    variables, meta = checkpoint.load_for_inference(str(tmp_path), which)
    expected, expected_meta = checkpoint.load_for_inference(str(reference_run), which)
    assert _without_timings(meta['run']) == _without_timings(expected_meta['run'])
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, expected)
  best_run = checkpoint.load_for_inference(str(tmp_path), BEST)[1]['run']
  assert best_run['best']['best_epoch'] == 2 and best_run['epoch'] == 2


def test_a_rerun_that_trains_differently_rewrites_the_replayed_best(tmp_path, reference_run):
  """Killed after epoch 2's best is committed, before its latest; rerun with another head_lr (a
  resume may change rates): the replayed epoch 2 is the best checkpoint, not the killed run's."""
  assert _killed_run(tmp_path, '3:after').returncode == -signal.SIGKILL
  changed_batch = _killed_run(tmp_path, 'batch_size=64')
  assert changed_batch.returncode == 1 and 'Traceback' not in changed_batch.stderr
  assert changed_batch.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path} holds a run of 4 steps per epoch (batch size 32), and this config and data '
      'give 2 (batch size 64); a resumed run keeps its batch size and training faces, so its steps '
      "and schedule stay one run's: resume with --config.batch_size=32 and the same data, or pass "
      'a new --workdir.')
  # A refused resume changes nothing: the killed run's best/8, ahead of its latest/4, is kept.
  assert checkpoint.committed_steps(str(tmp_path), BEST) == [4, 8]
  # The same count of other training faces (generated with another seed): refused too.
  changed_faces = _killed_run(tmp_path, 'data.train_split=validation', 'data.generated_eval_size=128')
  assert changed_faces.returncode == 1 and 'Traceback' not in changed_faces.stderr
  assert re.fullmatch(
      rf'error: {tmp_path} holds a run that trained on other training faces \(128, fingerprint '
      r'[0-9a-f]{16}\) than this config loads \(128, [0-9a-f]{16}\); a resumed run keeps its data: '
      r'resume with the data settings in config.json there, or pass a new --workdir.',
      changed_faces.stderr.strip().splitlines()[-1]), changed_faces.stderr[-2000:]
  assert checkpoint.committed_steps(str(tmp_path), BEST) == [4, 8]
  rerun = _killed_run(tmp_path, 'head_lr=0.002')
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  history = [{k: v for k, v in r.items() if k not in ('epoch_seconds', 'train_images_per_second')}
             for r in metrics.read_history(tmp_path)]
  _, meta = checkpoint.load_for_inference(str(tmp_path), BEST)
  assert meta['run']['best']['best_epoch'] == 2
  assert _without_timings(meta['run'])['history'] == history[:2]
  # The killed run's epoch 2 trained at the reference's rate; the replay at the new one.
  assert history[1]['head_lr'] == 2 * metrics.read_history(reference_run)[1]['head_lr']
  # One best checkpoint is left on disk, the run's best epoch.
  assert checkpoint.committed_steps(str(tmp_path), BEST) == [8]
  assert checkpoint.committed_steps(str(tmp_path), LATEST) == [12]


def _small_config():
  config = generated_smoke_config(64, 32)
  config.num_epochs, config.eval_batch_size, config.bn_recalibration_faces = 1, 32, 64
  return config


def test_a_second_run_on_a_workdir_is_refused_until_the_first_ends(tmp_path):
  os.makedirs(tmp_path / 'run')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\nfrom fer_jax.checkpoint import WorkdirLock\n'
       f'with WorkdirLock({str(tmp_path / "run")!r}):\n  print("locked", flush=True)\n  time.sleep(600)'],
      stdout=subprocess.PIPE, text=True, cwd=REPO)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(FerJaxError, match=rf'is in use by another training run \(process {holder.pid}\)'):
      train.train_and_evaluate(_small_config(), str(tmp_path / 'run'))
  finally:
    holder.kill()  # SIGKILL: the lock must not outlive its process
    holder.wait()
  train.train_and_evaluate(_small_config(), str(tmp_path / 'run'))
  assert checkpoint.Checkpoints(str(tmp_path / 'run')).latest_step() == 2


def test_readers_see_only_committed_steps_while_a_run_writes(tmp_path):
  writer = subprocess.Popen([sys.executable, os.path.join(HERE, 'killed_run.py'), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
  reads, steps = 0, set()
  while writer.poll() is None:
    try:
      _, meta = checkpoint.load_for_inference(str(tmp_path), LATEST)
    except FerJaxError as e:
      assert 'has no checkpoints' in str(e) or 'holds no checkpoint yet' in str(e), e
      time.sleep(0.05)
      continue
    reads += 1
    steps.add(meta['run']['history'][-1]['step'])
  assert writer.returncode == 0, writer.stderr.read()[-3000:]
  assert reads > 0 and steps <= {4, 8, 12}


def test_a_workdir_that_is_a_file_or_not_writable_is_one_sentence(tmp_path):
  (tmp_path / 'taken').write_text('x')
  with pytest.raises(FerJaxError, match=r'taken is a file, not a folder'):
    train.train_and_evaluate(_small_config(), str(tmp_path / 'taken'))
  with pytest.raises(FerJaxError, match=r'taken/run: cannot write in .*taken/run \(part of that '
                                        r'path is a file, not a folder\)'):
    train.train_and_evaluate(_small_config(), str(tmp_path / 'taken' / 'run'))


def _mount_tmpfs(path, options: str) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                        capture_output=True).returncode == 0


def test_read_only_and_full_disks_are_one_sentence(tmp_path):
  """Needs a tmpfs mount (root); without one the write check above stands in for it."""
  if not _mount_tmpfs(tmp_path / 'ro', 'ro,size=1m'):
    pytest.skip('cannot mount a tmpfs here')
  try:
    with pytest.raises(FerJaxError, match=r'ro/run: cannot write in .*ro/run \(Read-only file '
                                          r'system\)'):
      train.train_and_evaluate(_small_config(), str(tmp_path / 'ro' / 'run'))
  finally:
    subprocess.run(['umount', '-l', str(tmp_path / 'ro')])
  # 20 MiB holds the run's small files but not a 77 MiB checkpoint (params and Adam's moments).
  assert _mount_tmpfs(tmp_path / 'full', 'size=20m')
  try:
    with pytest.raises(FerJaxError, match=r"no room for this model's checkpoints \(2 copies of \d+ "
                                          r'MiB at the peak of a save.*\): about \d+ MiB needed in '
                                          r'.*full/run/checkpoints, which has \d+ MiB free; free some '
                                          r'space there; nothing was saved before the first '
                                          r'checkpoint, and the new workdir .* was removed'):
      train.train_and_evaluate(_small_config(), str(tmp_path / 'full' / 'run'))
    assert not os.path.exists(tmp_path / 'full' / 'run'), 'the failed start left its workdir'
  finally:
    subprocess.run(['umount', '-l', str(tmp_path / 'full')])
  # 200 MiB holds a best and a latest, not the four copies that exist while epoch 2 saves.
  assert _mount_tmpfs(tmp_path / 'two', 'size=200m')
  try:
    config = _small_config()
    config.num_epochs = 2
    with pytest.raises(FerJaxError, match=r"no room for this model's checkpoints \(4 copies of"):
      train.train_and_evaluate(config, str(tmp_path / 'two' / 'run'))
    assert not os.path.exists(tmp_path / 'two' / 'run')
    # A latest every 3 epochs: the best of each of those epochs waits for it to be pruned.
    config.num_epochs, config.checkpoint_every_epochs = 4, 3
    with pytest.raises(FerJaxError, match=r"no room for this model's checkpoints \(6 copies of"):
      train.train_and_evaluate(config, str(tmp_path / 'two' / 'run'))
  finally:
    subprocess.run(['umount', '-l', str(tmp_path / 'two')])


def test_a_disk_that_fills_during_a_save_is_one_sentence(tmp_path):
  """Another writer takes the space after the free-space check, while Orbax writes the first
  checkpoint: one line, no thread's traceback, and the new workdir is gone."""
  if not _mount_tmpfs(tmp_path / 'disk', 'size=400m'):
    pytest.skip('cannot mount a tmpfs here')
  workdir, filler = tmp_path / 'disk' / 'run', tmp_path / 'disk' / 'filler'
  try:
    run = subprocess.Popen(
        [sys.executable, '-m', 'fer_jax.main', '--config', 'configs/smoke.py', '--workdir',
         str(workdir), '--config.data.source=generated', '--config.data.generated_train_size=64',
         '--config.data.max_train_examples=64', '--config.progress_bar=false'],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not _leftovers(workdir):  # Orbax has begun the step's temporary folder
      assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-2000:]
      time.sleep(0.01)
    with open(filler, 'wb') as f:  # takes every free byte at once (fallocate), then the rest
      with contextlib.suppress(OSError):
        os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(filler).free)
      with contextlib.suppress(OSError):
        while True:
          f.write(bytes(2**16))
          f.flush()
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert 'Traceback' not in stderr and len(stderr) < 5000, stderr[-3000:]
    # When the best checkpoint was complete before the disk was full, the latest's write or its
    # check fails instead, and the best is left to evaluate.
    if workdir.exists():
      assert not _leftovers(workdir), 'the failed save left its temporary folder'
      assert re.fullmatch(r'error: (could not write|no room for) the latest checkpoint \(step 2\)'
                          r'.*; free some space (there|or fix the folder); only the best checkpoint '
                          r'\(step 2\) was saved in .*', last), last
      return
    assert re.fullmatch(r'error: could not write the best checkpoint \(step 2\) to .*/best: No space '
                        r'left on device \(\d+ MiB free there\); free some space or fix the folder; '
                        r'nothing was saved before the first checkpoint, and the new workdir '
                        r'.* was removed; rerun the same command to start again.', last), last
  finally:
    subprocess.run(['umount', '-l', str(tmp_path / 'disk')])


def test_resuming_with_a_config_that_changes_the_state_is_one_sentence(tmp_path):
  train.train_and_evaluate(_small_config(), str(tmp_path))
  config = _small_config()
  config.num_epochs, config.ema_decay = 2, 0.999
  with pytest.raises(FerJaxError, match=r'trained with config.ema_decay=0.0, and the config now says '
                                        r'0.999.*resume with --config.ema_decay=0.0'):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize('field,value,message', [
    ('head_lr', -1.0, r'config.head_lr=-1.0 is negative'),
    ('weight_decay', -1.0, r'config.weight_decay=-1.0 is negative'),
    ('data.max_train_examples', -5, r'config.data.max_train_examples=-5 is negative; use 0 or more \(0 = all\)'),
    ('momentum', 1.5, r'config.momentum=1.5 is out of range'),
    ('head_lr', float('inf'), r'config.head_lr=inf is not a finite number'),
    ('weight_decay', float('nan'), r'config.weight_decay=nan is not a finite number'),
    ('data.generated_train_size', -5, r'config.data.generated_train_size=-5 is negative'),
    ('model.dtype', 'float8', r"config.model.dtype='float8' is not a compute dtype the models "
                              r'train in; use one of float32, bfloat16, float16'),
    ('model.dtype', 'int32', r"config.model.dtype='int32' is not a compute dtype"),
    ('seed', 2**64, r'config.seed=18446744073709551616 is out of range; use a whole number from 0'),
    ('seed', 2**32, r'config.seed=4294967296 is out of range'),
    ('lr_decay_every_epochs', 0, r'config.lr_decay_every_epochs=0 must be at least 1'),
    ('warmup_epochs', 1.0, r'config.warmup_epochs=1.0 is not below config.num_epochs=1'),
])
def test_nonsense_values_are_refused_before_any_work(tmp_path, field, value, message):
  config = _small_config()
  if field == 'warmup_epochs':  # the step schedule has no warm-up
    config.lr_schedule = 'cosine'
  group, _, name = field.rpartition('.')
  (config[group] if group else config)[name] = value
  with pytest.raises(FerJaxError, match=message):
    config_checks.validate(config)
  with pytest.raises(FerJaxError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_a_loss_that_explodes_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _small_config()
  # Plain SGD at 100 on the head: its last layer (no BatchNorm after it) grows the logits, so the
  # loss climbs by orders of magnitude while it is still finite.
  config.num_epochs, config.head_lr, config.backbone_lr = 3, 100.0, 0.0
  config.optimizer, config.momentum, config.weight_decay, config.nesterov = 'sgd', 0.0, 0.0, False
  with pytest.raises(FerJaxError, match=r"training diverged in epoch 2: the train loss is [0-9.e+]+, "
                                        r"over 100x epoch 1's") as e:
    train.train_and_evaluate(config, str(tmp_path))
  diverged = int(str(e.value).split('epoch ')[1].split(':')[0])
  assert f'the checkpoints of epoch {diverged - 1} and before are kept' in str(e.value)
  _, meta = checkpoint.load_for_inference(str(tmp_path), LATEST)
  assert meta['run']['epoch'] == diverged - 1
  # In epoch 1 there is no earlier epoch to compare with: the loss of a uniform guess stands in.
  config.num_epochs, config.head_lr = 1, 1e4
  with pytest.raises(FerJaxError, match=r"training diverged in epoch 1: the train loss is [0-9.e+]+, "
                                        r"over 100x a uniform guess's 1.946; nothing was saved "
                                        r'before it. Lower config.head_lr'):
    train.train_and_evaluate(config, str(tmp_path / 'first'))
  assert not os.path.exists(tmp_path / 'first')


def test_a_failed_start_leaves_no_workdir_and_an_unknown_field_names_the_closest(tmp_path):
  config = _small_config()
  config.data.source, config.data.csv_path = 'fer2013', str(tmp_path / 'missing.csv')
  with pytest.raises(FerJaxError, match='does not exist'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')
  out = subprocess.run([sys.executable, '-m', 'fer_jax.main', '--config', 'configs/smoke.py',
                        '--workdir', str(tmp_path / 'run'), '--config.head_rl=1'],
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 2 and 'Traceback' not in out.stderr  # a wrong command line
  assert out.stderr.strip() == ("error: --config.head_rl=1: configs/smoke.py has no field 'head_rl'; "
                                'did you mean config.head_lr?')


def test_preparation_removes_what_a_killed_one_left(tmp_path):
  csv_path = write_csv(tmp_path / 'fer.csv', random_rows(16))
  config = _small_config().data
  config.source, config.csv_path, config.tfds_dir = 'fer2013', str(csv_path), str(tmp_path / 'tfds')
  from fer_jax.data import fer2013
  builder = fer2013.Fer2013(csv_path=str(csv_path), data_dir=str(tmp_path / 'tfds'))
  stale = os.path.join(os.path.dirname(builder.data_dir), 'incomplete.ABC123_1.0.0')
  os.makedirs(os.path.join(stale, 'part'))
  assert len(data.load_split(config, 'train')) == 8
  assert not os.path.exists(stale)


def test_an_empty_split_and_a_csv_path_that_is_a_folder_are_one_sentence(tmp_path):
  config = _small_config()
  config.data.generated_eval_size = 0
  with pytest.raises(FerJaxError, match=r'the validation split has no faces; give it faces, or '
                                        r'check config.data.max_eval_examples'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  config = _small_config()
  config.data.source, config.data.csv_path = 'fer2013', str(tmp_path)
  with pytest.raises(FerJaxError, match=r'is a folder, not a CSV file'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_rerunning_a_finished_run_trains_nothing_and_rewrites_nothing(tmp_path, caplog):
  train.train_and_evaluate(_small_config(), str(tmp_path))
  written = {name: os.stat(tmp_path / name).st_mtime_ns
             for name in ('config.json', 'metrics.jsonl', 'model_summary.txt', 'learning_curves.png')}
  with caplog.at_level('INFO'):
    train.train_and_evaluate(_small_config(), str(tmp_path))
  assert any(f'nothing to train: the run in {tmp_path} ended at epoch 1' in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records][-5:]
  assert {name: os.stat(tmp_path / name).st_mtime_ns for name in written} == written
