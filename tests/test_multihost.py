"""Several processes training one model on jax.distributed, on 127.0.0.1 with forced CPU devices.

Runs go through `python -m fer_jax.main` as separate processes, as a user starts them. The 1-process
reference joins the same runtime (--num_processes=1), so both sides reduce across devices with the
same collectives (gloo on CPU); XLA's fast-CPU dot path is off because its threads split work by
how many devices share a process. The sums still add in another order on some CPUs, so the two
layouts agree to float noise, not to the bit: the equivalence run trains with SGD, whose update is
linear in the gradient (Adam divides noise-sized gradients by their own size, turning float noise
into whole learning-rate steps), and for one step an epoch: training amplifies the noise (after 4
steps the eval losses differed by 1e-4, after 24 even SGD's runs part by points of accuracy).
"""
import gzip
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fer_jax import checkpoint, metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Process:
  """One `python -m fer_jax.main` process with its output in files (no pipe to fill up)."""

  def __init__(self, log_dir: pathlib.Path, name: str, args: list[str], devices: int,
               env: dict[str, str] | None = None):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS='cpu', **(env or {}))
    env.pop('XLA_FLAGS', None)
    self.out, self.err = log_dir / f'{name}.out', log_dir / f'{name}.err'
    with open(self.out, 'w') as out, open(self.err, 'w') as err:
      self.popen = subprocess.Popen([sys.executable, '-m', 'fer_jax.main', *args], cwd=REPO,
                                    env=env, stdout=out, stderr=err)

  def wait(self, timeout: float = 600) -> int:
    return self.popen.wait(timeout)

  @property
  def stderr(self) -> str:
    return self.err.read_text()

  def last_line(self) -> str:
    return self.stderr.strip().splitlines()[-1]


def start(tmp_path: pathlib.Path, workdir: str, processes: int, devices: int, args: list[str],
          name: str = 'run', extra: dict[int, list[str]] | None = None,
          envs: dict[int, dict[str, str]] | None = None) -> list[Process]:
  """`processes` processes of one run, each with `devices` CPU devices."""
  port = free_port()
  common = ['--config', 'configs/smoke.py', '--workdir', str(tmp_path / workdir),
            '--config.progress_bar=false', *args]
  return [Process(tmp_path, f'{name}{i}', common + [
      f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}',
      f'--process_id={i}', *(extra or {}).get(i, [])], devices, (envs or {}).get(i))
      for i in range(processes)]


@pytest.fixture(scope='module')
def real_faces(real_csv, tmp_path_factory) -> str:
  """384 Training and 128 PublicTest faces of the real FER2013, as an arrays file."""
  want, faces, labels, usage = {'Training': 384, 'PublicTest': 128}, [], [], []
  taken = dict.fromkeys(want, 0)
  opener = gzip.open if real_csv.endswith('.gz') else open
  with opener(real_csv, 'rt') as f:
    next(f)
    for line in f:
      emotion, pixels, split = line.strip().split(',')
      if taken.get(split, 0) < want.get(split, 0):
        taken[split] += 1
        faces.append(np.array(pixels.split(), np.uint8).reshape(48, 48))
        labels.append(int(emotion))
        usage.append(0 if split == 'Training' else 1)
      if taken == want:
        break
  path = tmp_path_factory.mktemp('multihost') / 'faces.npz'
  np.savez(path, x=np.stack(faces), y=np.array(labels), usage=np.array(usage))
  return str(path)


def test_two_processes_train_as_one_and_the_run_resumes_in_one(real_faces, tmp_path):
  args = ['--config.data.source=arrays', f'--config.data.arrays_path={real_faces}',
          '--config.fast_cpu=false', '--config.optimizer=sgd', '--config.backbone_lr=0.01',
          '--config.head_lr=0.01', '--config.data.max_train_examples=32']
  runs = start(tmp_path, 'two', 2, 2, args, 'two') + start(tmp_path, 'one', 1, 4, args, 'one')
  assert [run.wait() for run in runs] == [0, 0, 0], [run.last_line() for run in runs]

  two, one = metrics.read_history(tmp_path / 'two'), metrics.read_history(tmp_path / 'one')
  assert [r['epoch'] for r in two] == [r['epoch'] for r in one] == [1, 2]
  for a, b in zip(two, one):
    for key in ('step', 'backbone_lr', 'head_lr'):
      assert a[key] == b[key], key
    # Float noise may move a face across a decision boundary: one face of 32 (train) or 128.
    assert abs(a['train_accuracy'] - b['train_accuracy']) <= 1 / 32 + 1e-9, (a, b)
    assert abs(a['eval_accuracy'] - b['eval_accuracy']) <= 1 / 128 + 1e-9, (a, b)
    for key in ('train_loss', 'train_objective', 'eval_loss'):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  params_two, _ = checkpoint.load_for_inference(str(tmp_path / 'two'), 'latest')
  params_one, _ = checkpoint.load_for_inference(str(tmp_path / 'one'), 'latest')
  for name in ('params', 'batch_stats'):
    for a, b in zip(*(jax.tree_util.tree_leaves(p[name]) for p in (params_two, params_one))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # BatchNorm variances: 1e-5
  # Process 0 logs and writes the run's files; process 1 says one line.
  assert 'epoch   2' in runs[0].stderr and 'epoch   2' not in runs[1].stderr
  assert 'process 1 of 2: 2 devices here' in runs[1].stderr and 'model:' not in runs[1].stderr
  for name in ('metrics.jsonl', 'config.json', 'model_summary.txt', 'learning_curves.png'):
    assert (tmp_path / 'two' / name).exists(), name

  # The same run continued by one ordinary process on another number of devices.
  resumed = Process(tmp_path, 'resumed', ['--config', 'configs/smoke.py', '--workdir',
                                          str(tmp_path / 'two'), '--config.progress_bar=false',
                                          *args, '--config.num_epochs=3'], devices=2)
  assert resumed.wait() == 0, resumed.last_line()
  assert 'resumed from' in resumed.stderr
  history = metrics.read_history(tmp_path / 'two')
  assert history[:2] == two and history[2]['epoch'] == 3
  assert history[2]['step'] == 3 * two[0]['step']


GENERATED = ['--config.data.source=generated', '--config.data.generated_train_size=64',
             '--config.data.generated_eval_size=32']


def wait_for_epochs(runs: list[Process], workdir: pathlib.Path, epochs: int) -> None:
  deadline = time.monotonic() + 400
  while not (workdir / 'metrics.jsonl').exists() or len(metrics.read_history(workdir)) < epochs:
    assert time.monotonic() < deadline and all(r.popen.poll() is None for r in runs), \
        [r.stderr[-2000:] for r in runs]
    time.sleep(0.5)


def test_a_stopped_process_stops_the_others_and_the_run_resumes(tmp_path):
  workdir = tmp_path / 'run'
  hint = ('start every process again with the same command to resume from the latest checkpoint '
          f'in {workdir}.')
  # Two of the augmentation steps: this test is about faults, and the full pipeline's compilation
  # would double its time.
  args = GENERATED + ['--config.augment.steps=flip,noise', '--config.num_epochs=100',
                      '--heartbeat_timeout=10']
  # SIGTERM (a scheduler's stop): process 1 says why, and process 0 repeats it at once.
  runs = start(tmp_path, 'run', 2, 2, args, 'term')
  wait_for_epochs(runs, workdir, 1)
  runs[1].popen.send_signal(signal.SIGTERM)
  stopped_at = time.monotonic()
  assert runs[0].wait(timeout=120) == 1 and runs[1].wait(timeout=60) == 1
  assert time.monotonic() - stopped_at < 15
  assert runs[1].last_line() == f'error: process 1 was interrupted; {hint}'
  assert runs[0].last_line() == ('error: process 1 stopped, so process 0 stops too; its error: '
                                 f'process 1 was interrupted; {hint}')
  # Resumed by the same two processes; then process 1 is killed without a word (SIGKILL), and
  # process 0 misses it (the peer watch, or the next collective first).
  stopped = len(metrics.read_history(workdir))
  runs = start(tmp_path, 'run', 2, 2, args, 'kill')
  wait_for_epochs(runs, workdir, stopped + 1)
  assert 'resumed from' in runs[0].stderr
  runs[1].popen.send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  assert runs[0].wait(timeout=120) == 1
  assert time.monotonic() - killed_at < 60
  last = runs[0].last_line()
  assert (last.startswith('error: process 1 has given no sign of life for 10 s') or
          last.startswith('error: process 0 lost contact with the rest of the run')), last
  assert last.endswith(hint) and 'Traceback' not in runs[0].stderr
  # And resumed by one ordinary process.
  done = len(metrics.read_history(workdir))
  resumed = Process(tmp_path, 'resumed', ['--config', 'configs/smoke.py', '--workdir',
                                          str(workdir), '--config.progress_bar=false',
                                          *args[:-2], f'--config.num_epochs={done + 1}'], devices=4)
  assert resumed.wait() == 0, resumed.last_line()
  assert 'resumed from' in resumed.stderr
  assert len(metrics.read_history(workdir)) == done + 1


def test_a_process_lost_before_the_first_checkpoint_leaves_no_workdir(tmp_path):
  workdir = tmp_path / 'early'
  runs = start(tmp_path, 'early', 2, 1, GENERATED + ['--heartbeat_timeout=10'], 'early')
  deadline = time.monotonic() + 300
  while not workdir.exists():  # process 0 has made the run's new workdir
    assert time.monotonic() < deadline and runs[0].popen.poll() is None, runs[0].stderr[-2000:]
    time.sleep(0.1)
  runs[1].popen.send_signal(signal.SIGKILL)
  assert runs[0].wait(timeout=120) == 1
  last = runs[0].last_line()
  assert last.endswith(f'nothing was saved before the first checkpoint, and the new workdir '
                       f'{workdir} was removed; start every process again with the same command '
                       'to start again.'), last
  assert not workdir.exists() and 'Traceback' not in runs[0].stderr


def test_processes_with_different_configs_or_an_indivisible_batch_are_refused(tmp_path):
  different = start(tmp_path, 'different', 2, 1, GENERATED, 'different',
                    extra={1: ['--config.seed=7']})
  indivisible = start(tmp_path, 'indivisible', 2, 2, GENERATED + ['--config.batch_size=6'],
                      'indivisible')
  rng = np.random.default_rng(0)  # the same config, but each process's FER2013_ARRAYS differs
  for name, size in (('a.npz', 40), ('b.npz', 48)):
    np.savez(tmp_path / name, x=rng.integers(0, 256, (size, 48, 48), dtype=np.uint8),
             y=rng.integers(0, 7, size), usage=np.arange(size) % 2)
  other_data = start(tmp_path, 'other_data', 2, 1, ['--config.data.source=arrays'], 'other_data',
                     envs={0: {'FER2013_ARRAYS': str(tmp_path / 'a.npz')},
                           1: {'FER2013_ARRAYS': str(tmp_path / 'b.npz')}})
  for run in different + indivisible + other_data:
    assert run.wait(timeout=300) == 1, run.stderr[-2000:]
    assert 'Traceback' not in run.stderr
  assert any('process 1 was started with a different config from process 0: config.seed (0 vs 7)'
             in run.last_line() for run in different)
  assert all('config.batch_size=6 does not divide across 4 devices (2 processes)' in run.stderr
             for run in indivisible)
  assert any('process 1 loaded a different train split from process 0 (24 faces vs 20' in
             run.last_line() for run in other_data)
  for workdir in ('different', 'indivisible', 'other_data'):
    assert not (tmp_path / workdir).exists(), workdir


@pytest.mark.parametrize('flags, message', [
    (['--num_processes=2', '--process_id=2', '--coordinator_address=127.0.0.1:1'],
     'error: --process_id=2 is outside 0..1 for --num_processes=2'),
    (['--num_processes=2'], 'error: a multi-process run needs all of --coordinator_address'),
    (['--distributed'], 'error: --distributed found no cluster to join'),
    (['--num_processes=2', '--process_id=0', '--coordinator_address=localhost'],
     'error: --coordinator_address=localhost has no port'),
    (['--num_processes=2', '--process_id=1', '--coordinator_address=localhost:http'],
     'error: --coordinator_address=localhost:http has no port'),
])
def test_bad_process_flags_are_one_sentence(tmp_path, flags, message):
  run = Process(tmp_path, 'bad', ['--config', 'configs/smoke.py', '--workdir',
                                  str(tmp_path / 'w'), *GENERATED, *flags], devices=1)
  assert run.wait(timeout=120) == 1
  assert run.stderr.strip().startswith(message), run.stderr
  assert not (tmp_path / 'w').exists()


def test_a_coordinator_that_is_not_there_is_an_error_after_the_timeout(tmp_path):
  run = Process(tmp_path, 'alone', ['--config', 'configs/smoke.py', '--workdir', str(tmp_path / 'w'),
                                    *GENERATED, f'--coordinator_address=127.0.0.1:{free_port()}',
                                    '--num_processes=2', '--process_id=1',
                                    '--initialization_timeout=3'], devices=1)
  began = time.monotonic()
  assert run.wait(timeout=120) == 1
  assert time.monotonic() - began < 60
  assert run.last_line().startswith('error: process 1 could not reach the coordinator at 127.0.0.1:')
  assert 'Traceback' not in run.stderr


def test_a_coordinator_port_in_use_is_one_sentence(tmp_path):
  with socket.socket() as taken:
    taken.bind(('0.0.0.0', 0))
    taken.listen()
    port = taken.getsockname()[1]
    run = Process(tmp_path, 'busy', ['--config', 'configs/smoke.py', '--workdir',
                                     str(tmp_path / 'w'), *GENERATED,
                                     f'--coordinator_address=127.0.0.1:{port}',
                                     '--num_processes=2', '--process_id=0'], devices=1)
    assert run.wait(timeout=120) == 1
  assert run.stderr.strip() == (f'error: process 0 cannot host the coordinator on port {port} '
                                '(Address already in use); another program (perhaps another run) '
                                'uses it: pick a free port for --coordinator_address on every '
                                'process.')
