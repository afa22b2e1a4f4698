"""The exported ONNX model runs without JAX: `python -m fer_jax.onnx_predict` and the Python block
of docs/deploy.md, each in a process where `import jax` fails."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Runs a module or a file's code in a Python where importing JAX (or Flax, Optax) raises.
_WITHOUT_JAX = '''
import runpy, sys
for name in ('jax', 'jaxlib', 'flax', 'optax'):
    sys.modules[name] = None
target = sys.argv[1]
sys.argv = sys.argv[1:]
if target.endswith('.py'):
    runpy.run_path(target, run_name='__main__')
else:
    runpy.run_module(target, run_name='__main__', alter_sys=True)
'''


def _without_jax(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', _WITHOUT_JAX, *args], capture_output=True,
                        text=True, cwd=cwd, timeout=300,
                        env={**os.environ, 'PYTHONPATH': str(REPO)})


@pytest.fixture(scope='module')
def onnx_file(tmp_path_factory):
  from fer_jax import export
  from fer_jax.predictor import Predictor
  path = tmp_path_factory.mktemp('onnx') / 'fer.onnx'
  path.write_bytes(export.to_onnx(Predictor.pretrained()))
  return path


def test_onnx_predict_finds_the_happy_face_without_jax(onnx_file, tmp_path):
  from fer_jax import samples
  missing = tmp_path / 'missing.jpg'
  result = _without_jax('fer_jax.onnx_predict', str(onnx_file), samples.path('photo'), str(missing))
  assert result.returncode == 1, result.stderr[-2000:]
  assert re.fullmatch(rf'{re.escape(samples.path("photo"))}  face 0  box \d+, \d+, \d+, \d+  '
                      r'happy 0\.[89]\d\d', result.stdout.strip()), result.stdout
  assert result.stderr.strip() == f'error: {missing} does not exist; check the path.'


def test_a_file_that_is_not_onnx_is_one_sentence(tmp_path):
  bad = tmp_path / 'fer.onnx'
  bad.write_text('not a model')
  result = _without_jax('fer_jax.onnx_predict', str(bad), 'photo.jpg')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().startswith(f'error: {bad} cannot be loaded by onnxruntime (')
  assert result.stderr.strip().endswith('pass a file written by python -m fer_jax.export.')


def test_the_python_block_of_docs_deploy_runs_without_jax(onnx_file, tmp_path):
  from fer_jax import samples
  text = (REPO / 'docs' / 'deploy.md').read_text()
  blocks = re.findall(r'```python\n(.*?)```', text, re.S)
  assert len(blocks) == 1
  shutil.copy(onnx_file, tmp_path / 'fer.onnx')
  shutil.copy(samples.path('photo'), tmp_path / 'photo.jpg')
  (tmp_path / 'deploy_example.py').write_text(blocks[0])
  result = _without_jax(str(tmp_path / 'deploy_example.py'), cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert re.fullmatch(r'\(\d+, \d+, \d+, \d+\) happy 0\.[89]\d+', result.stdout.strip()), result.stdout
