"""Compilation that shows and is paid once (fer_jax.compilation): the cache folder and its off
switch, a second `predict` that compiles nothing, and the log line of a compilation."""
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from fer_jax import compilation, plural, samples
from tests.conftest import REPO


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.delenv('FER_JAX_COMPILATION_CACHE', raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  if sys.platform.startswith('linux'):
    assert compilation.cache_dir() == str(tmp_path / 'fer_jax' / 'xla')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'mine'))
  assert compilation.cache_dir() == str(tmp_path / 'mine')
  monkeypatch.setenv('FER_JAX_COMPILATION_CACHE', '0')
  assert compilation.cache_dir() is None


def _predict(cache: str, switch: str = '1') -> subprocess.CompletedProcess:
  env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': cache, 'FER_JAX_COMPILATION_CACHE': switch}
  env.pop('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', None)
  result = subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained', '--tta=flip',
                           samples.path('photo')], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)
  assert result.returncode == 0 and 'happy' in result.stdout, result.stderr[-2000:]
  return result


def test_a_second_predict_reads_every_program_from_the_cache(tmp_path):
  cache = tmp_path / 'xla'
  _predict(str(cache))
  first = sorted(os.listdir(cache))
  assert any(name.startswith('jit__forward') for name in first), first
  _predict(str(cache))
  assert sorted(os.listdir(cache)) == first  # nothing compiled anew, so nothing written


def test_the_off_switch_writes_no_cache(tmp_path):
  _predict(str(tmp_path / 'xla'), switch='0')
  assert not (tmp_path / 'xla').exists()


def test_a_long_compilation_is_logged_with_its_time(caplog):
  log = compilation.CompileLog(after_s=0.0)
  jax.monitoring.register_scalar_listener(log.started)
  jax.monitoring.register_event_duration_secs_listener(log.finished)
  try:
    with caplog.at_level(logging.INFO):
      jax.jit(lambda x: jnp.sin(x) * 3.0, static_argnums=())(jnp.arange(7.0)).block_until_ready()
  finally:
    jax.monitoring.unregister_scalar_listener(log.started)
    jax.monitoring.unregister_event_duration_listener(log.finished)
  assert any(r.getMessage().startswith('compiled a jitted function in ') for r in caplog.records)


def test_counts_read_plainly():
  assert [plural(n, 'epoch') for n in (0, 1, 2)] == ['0 epochs', '1 epoch', '2 epochs']
  assert plural(1, 'device') == '1 device' and plural(3, 'class') == '3 classes'
