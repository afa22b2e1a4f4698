"""Shared fixtures: small CSVs written on the fly, the real FER2013 when present, small configs."""
import gzip
import os
import pathlib

import jax
import numpy as np
import pytest

from configs import smoke

REPO = pathlib.Path(__file__).resolve().parents[1]


def pytest_configure(config):
  """One persistent XLA cache for the session and its subprocesses: the same train step is
  compiled by many tests, and compiling it is most of their time on a 2-core CPU."""
  cache = os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                                str(pathlib.Path(config.rootpath) / '.pytest_cache' / 'xla'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
SHARED_CSV = REPO.parent / 'shared' / 'data' / 'fer2013' / 'fer2013.csv.gz'


def write_csv(path: pathlib.Path, rows: list[tuple[int, np.ndarray, str]],
              header: str = 'emotion,pixels,Usage') -> pathlib.Path:
  """Writes a FER2013-format CSV (gzipped when the name ends in .gz)."""
  text = header + '\n' + ''.join(
      f'{label},{" ".join(map(str, np.asarray(pixels).reshape(-1)))},{usage}\n'
      for label, pixels, usage in rows)
  if str(path).endswith('.gz'):
    with gzip.open(path, 'wt') as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


def random_rows(num: int, usages=('Training', 'PublicTest'), seed: int = 0):
  rng = np.random.default_rng(seed)
  return [(int(rng.integers(0, 7)), rng.integers(0, 256, 2304), usages[i % len(usages)])
          for i in range(num)]


@pytest.fixture(scope='session')
def real_csv() -> str:
  """The real FER2013 CSV; CI must have it (so real-data tests run there), elsewhere it may skip."""
  path = os.environ.get('FER2013_PATH') or (str(SHARED_CSV) if SHARED_CSV.exists() else '')
  if not path or not os.path.exists(path):
    if os.environ.get('CI'):
      pytest.fail('FER2013 is missing in CI: .ci/run must set FER2013_PATH to the shared CSV.')
    pytest.skip('real FER2013 not available; set FER2013_PATH to run this test')
  return path


@pytest.fixture(scope='session')
def real_tfds_dir(tmp_path_factory) -> str:
  """One TFDS preparation of the real CSV shared by every test in the session."""
  return str(tmp_path_factory.mktemp('tfds_real'))


def generated_smoke_config(train_size: int, eval_size: int):
  """configs/smoke.py on generated faces, without the progress bar."""
  config = smoke.get_config()
  config.data.source = 'generated'
  config.data.generated_train_size = train_size
  config.data.generated_eval_size = eval_size
  config.progress_bar = False
  return config


@pytest.fixture
def generated_config():
  """A handful of generated faces: two steps per epoch."""
  config = generated_smoke_config(64, 48)
  config.eval_batch_size = 32
  return config
