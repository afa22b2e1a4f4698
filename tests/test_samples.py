"""The samples that ship in the package give a useful first run with nothing downloaded, and the
package imports from the folder that holds a clone named fer_jax."""
import json
import os
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from PIL import Image

from fer_jax import FerJaxError, samples
from tests.conftest import REPO


def test_the_samples_are_small_package_data():
  photo, clip = samples.paths()
  assert photo == samples.path('photo') and clip == samples.path('clip')
  assert os.path.getsize(photo) < 150_000 and os.path.getsize(clip) < 500_000
  package_data = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['setuptools'][
      'package-data']['fer_jax']
  for path in (photo, clip, os.path.join(os.path.dirname(photo), 'README.md')):
    assert f'samples/*{os.path.splitext(path)[1]}' in package_data or (
        f'samples/{os.path.basename(path)}' in package_data), path
  with pytest.raises(FerJaxError, match="no sample named 'video'; the samples are photo, clip."):
    samples.path('video')


def test_predict_sample_finds_a_happy_face_in_the_photo_and_every_frame(tmp_path):
  """The quick start: the shipped model on the shipped samples."""
  result = subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained', '--sample',
                           '--json', '--every=10', f'--annotate={tmp_path}'],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [json.loads(line) for line in result.stdout.splitlines()]
  assert [row['file'] for row in rows] == [samples.path('photo')] + [samples.path('clip')] * 4
  assert all(row['emotion'] == 'happy' and row['confidence'] > 0.8 for row in rows)
  assert sorted(os.listdir(tmp_path)) == ['astronaut_annotated.png', 'astronaut_clip_annotated.mp4']


def test_make_samples_writes_the_shipped_photo_the_same_way_twice(tmp_path):
  pytest.importorskip('skimage')
  for out in ('a', 'b'):
    subprocess.run([sys.executable, str(REPO / 'experiments' / 'make_samples.py'), '--out',
                    str(tmp_path / out)], check=True, capture_output=True, timeout=300)
  for name in samples.SAMPLES.values():
    assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes(), name
  shipped = np.asarray(Image.open(samples.path('photo')), np.float32)
  made = np.asarray(Image.open(tmp_path / 'a' / 'astronaut.jpg'), np.float32)
  assert np.abs(shipped - made).mean() < 1.0  # the same picture, whatever the JPEG encoder


def test_an_editable_install_imports_from_the_folder_holding_the_clone(tmp_path):
  """The clone's folder, named fer_jax, must not shadow the package as a namespace package."""
  setuptools = pytest.importorskip('setuptools')
  if int(setuptools.__version__.split('.')[0]) < 77:
    pytest.skip('needs setuptools>=77 (pyproject.toml\'s build requirement) to install offline')
  clone = tmp_path / 'fer_jax'
  for name in ('pyproject.toml', 'README.md', 'LICENSE', 'fer_jax/__init__.py',
               'configs/__init__.py'):
    (clone / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / name, clone / name)
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(tmp_path / 'venv')],
                 check=True)
  python = str(tmp_path / 'venv' / 'bin' / 'python')
  subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', '-e',
                  str(clone)], check=True, capture_output=True, timeout=300)
  result = subprocess.run([python, '-c', 'import fer_jax; print(fer_jax.__file__)'],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
  assert result.stdout.strip() == str(clone / 'fer_jax' / '__init__.py'), result.stderr
