"""What every command shares (fer_jax/cli.py): --help exits 0 without starting JAX, a bad input
is one line on stderr and exit status 1, and library chatter stays out of the log."""
import logging
import os
import subprocess
import sys

import pytest

from fer_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ('main', 'evaluate', 'predict', 'study', 'pretrained', 'bench', 'augment', 'export',
            'data.arrays')

# Runs a command's module as `python -m` does, then says whether JAX was imported.
_HELP_PROBE = '''
import runpy, sys
sys.argv = ['fer_jax.{name}', '--help']
try:
    runpy.run_module('fer_jax.{name}', run_name='__main__', alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
print('exit', code, 'jax imported', 'jax' in sys.modules)
'''


@pytest.mark.parametrize('name', COMMANDS)
def test_help_exits_zero_without_importing_jax(name):
  out = subprocess.run([sys.executable, '-c', _HELP_PROBE.format(name=name)], capture_output=True,
                       text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr[-2000:]
  expected = 'exit 0 jax imported False'
  assert out.stdout.strip().endswith(expected), out.stdout[-500:]
  assert 'flags' in out.stdout.lower() and 'Traceback' not in out.stderr


def test_an_error_is_one_line_and_exit_status_one(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'fer_jax.evaluate', '--pretrained', '--data',
                        str(tmp_path / 'missing.csv')], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      f'error: --data={tmp_path / "missing.csv"} does not exist; pass a FER2013 CSV (.csv / .csv.gz) '
      'or an image-folder root.')
  assert 'Traceback' not in out.stderr


def _record(pathname: str, level: int, message: str) -> logging.LogRecord:
  return logging.LogRecord('absl', level, pathname, 1, message, None, None)


def test_library_chatter_is_noise_and_our_lines_and_warnings_are_not():
  site = os.path.join('venv', 'lib', 'site-packages')
  assert cli.is_noise(_record(os.path.join(site, 'jax', '_src', 'xla_bridge.py'), logging.INFO,
                              "Unable to initialize backend 'tpu'"))
  assert cli.is_noise(_record(os.path.join(site, 'tensorflow_datasets', 'core', 'x.py'),
                              logging.WARNING, 'Using custom data configuration: csv_1'))
  assert not cli.is_noise(_record(os.path.join(os.path.dirname(cli.__file__), 'train.py'),
                                  logging.INFO, 'epoch 1 ...'))
  assert not cli.is_noise(_record(os.path.join(REPO, 'experiments', 'study.py'), logging.INFO, 'x'))
  # A checkout named fer_jax with its virtual environment inside, as the README's commands make it.
  checkout_site = os.path.join(os.sep, 'home', 'me', 'fer_jax', '.venv', 'lib', 'python3.11',
                               'site-packages')
  assert cli.is_noise(_record(os.path.join(checkout_site, 'orbax', 'checkpoint', 'x.py'),
                              logging.INFO, 'Finished saving checkpoint'))
  assert cli.is_noise(_record(os.path.join(checkout_site, 'jax', '_src', 'xla_bridge.py'),
                              logging.INFO, "Unable to initialize backend 'tpu'"))
  assert not cli.is_noise(_record(os.path.join(site, 'orbax', 'x.py'), logging.WARNING,
                                  'disk is full'))
  orbax = os.path.join(site, 'orbax', 'checkpoint', 'checkpoint_manager.py')
  for message in ('Waiting for previous save to complete took 1.645759 seconds. If this number is '
                  'high, consider checkpointing less frequently.',
                  'Given directory is read only=/runs/smoke/checkpoints/best',
                  'CheckpointManagerOptions.read_only=True, setting create=False.'):
    assert cli.is_noise(_record(orbax, logging.WARNING, message))
  assert not cli.is_noise(_record(orbax, logging.ERROR, 'Waiting for previous save to complete '
                                                        'failed'))


def test_fast_cpu_flag_is_set_once_and_can_be_turned_off(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_foo=1')
  monkeypatch.delenv('FER_JAX_FAST_CPU', raising=False)
  cli.configure_cpu_backend(True)
  cli.configure_cpu_backend(True)
  assert os.environ['XLA_FLAGS'] == f'--xla_foo=1 {cli.FAST_CPU_XLA_FLAG}'
  monkeypatch.setenv('XLA_FLAGS', '')
  cli.configure_cpu_backend(False)
  assert os.environ['XLA_FLAGS'] == ''
  monkeypatch.setenv('FER_JAX_FAST_CPU', '0')
  cli.configure_cpu_backend(True)
  assert os.environ['XLA_FLAGS'] == ''


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
  """`evaluate ... | head -1`: the report's first line, then no BrokenPipeError traceback."""
  from conftest import random_rows, write_csv
  csv = write_csv(tmp_path / 'faces.csv', random_rows(40, usages=('PublicTest',)))
  run = subprocess.Popen([sys.executable, '-m', 'fer_jax.evaluate', '--pretrained', '--data',
                          str(csv), '--tta', 'none', '--workdir', str(tmp_path / 'reports')],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
  assert run.stdout.readline()  # then the reader is gone, as `head -1` goes
  run.stdout.close()
  _, stderr = run.communicate(timeout=600)
  assert run.returncode == 1, stderr[-2000:]
  assert 'Traceback' not in stderr and 'BrokenPipeError' not in stderr, stderr[-2000:]


# A command whose Ctrl-C arrives inside a garbage-collection callback (JAX registers one), where
# Python prints an exception and drops it.
_INTERRUPT_IN_GC = '''
import gc, os, signal, time
from fer_jax import cli

def main(argv):
  def callback(phase, info):
    if phase == 'start':
      gc.callbacks.remove(callback)
      os.kill(os.getpid(), {signum})
      time.sleep(0.2)  # the signal's handler raises here, inside the callback
  gc.callbacks.append(callback)
  gc.collect()
  time.sleep(0.5)
  print('finished')

cli.run(main, uses_jax=False)
'''


@pytest.mark.parametrize('signum,status,name', [(2, 130, 'SIGINT (Ctrl-C)'), (15, 143, 'SIGTERM')])
def test_an_interrupt_inside_a_gc_callback_still_stops_the_command(signum, status, name):
  out = subprocess.run([sys.executable, '-c', _INTERRUPT_IN_GC.format(signum=signum)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
  assert out.returncode == status, out.stderr[-2000:]
  assert 'finished' not in out.stdout and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip() == f'error: interrupted by {name}: nothing more was written.'
