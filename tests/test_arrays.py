"""`python -m fer_jax.data.arrays` writes the arrays file that fer_jax.data.load_arrays reads: a
round trip through the project's own reader, and one sentence for each bad input."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, random_rows, write_csv
from fer_jax import data
from fer_jax.data import csv as fer_csv


def _arrays(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'fer_jax.data.arrays', *flags], capture_output=True,
                        text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize('name', ['faces.npz.xz', 'faces.npz'])
def test_round_trip_through_the_loader(tmp_path, name):
  csv_path = write_csv(tmp_path / 'faces.csv.gz',
                       random_rows(9, usages=('PublicTest', 'Training', 'PrivateTest')))
  out = tmp_path / name
  result = _arrays('--csv', str(csv_path), '--out', str(out))
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'wrote {out} (') and '3 Training, 3 PublicTest, 3 PrivateTest' \
      in result.stdout
  expected = fer_csv.read_fer2013_csv(str(csv_path))
  for split, usage in data.SPLIT_USAGE.items():
    images, labels = data.load_arrays(str(out), split)
    np.testing.assert_array_equal(images, expected[usage][0])
    np.testing.assert_array_equal(labels, expected[usage][1])
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['faces.csv.gz', name])


def test_an_existing_file_is_kept_without_overwrite(tmp_path):
  csv_path = write_csv(tmp_path / 'faces.csv', random_rows(2))
  out = tmp_path / 'faces.npz'
  out.write_bytes(b'keep me')
  result = _arrays('--csv', str(csv_path), '--out', str(out))
  assert result.returncode == 1 and out.read_bytes() == b'keep me'
  assert result.stderr.strip() == (f'error: --out={out} exists; pass --overwrite to replace it, '
                                   'or name another file.')
  assert _arrays('--csv', str(csv_path), '--out', str(out), '--overwrite').returncode == 0
  assert len(data.load_arrays(str(out), 'train')[1]) == 1


@pytest.mark.parametrize('csv_text,out_name,message', [
    (None, 'faces.npz.xz', '{csv} does not exist; pass the path of the Kaggle fer2013.csv (or '
                           '.csv.gz).'),
    ('emotion,pixels,Usage\n9,1 2,Training\n', 'faces.npz.xz', '{csv}, line 2: '),
    ('emotion,pixels,Usage\n', 'faces.npz.xz', '{csv} has a header but no rows; pass the full '
                                               'FER2013 CSV.'),
    ('emotion,pixels,Usage\n', 'faces.csv', '--out={out}: name a .npz.xz (compressed) or .npz '
                                            'file, e.g. fer2013_arrays.npz.xz.'),
])
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, csv_text, out_name, message):
  csv_path, out = tmp_path / 'in.csv', tmp_path / out_name
  if csv_text is not None:
    csv_path.write_text(csv_text)
  result = _arrays('--csv', str(csv_path), '--out', str(out))
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ' + message.format(csv=csv_path, out=out))
  assert not out.exists() and len(list(tmp_path.iterdir())) == (csv_text is not None)
