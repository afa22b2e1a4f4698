import gzip
import os

import ml_collections
import numpy as np
import pytest

from configs import enhanced
from conftest import random_rows, write_csv
from fer_jax import FerJaxError, data
from fer_jax.data import csv as fer_csv
from fer_jax.data import fer2013


def _data_config(csv_path, tfds_dir) -> ml_collections.ConfigDict:
  config = enhanced.get_config().data
  config.csv_path, config.tfds_dir = str(csv_path), str(tfds_dir)
  return config


@pytest.mark.parametrize('name', ['faces.csv', 'faces.csv.gz'])
def test_builder_prepares_csv_rows_exactly(tmp_path, name):
  rows = random_rows(12)
  csv_path = write_csv(tmp_path / name, rows)
  config = _data_config(csv_path, tmp_path / 'tfds')
  train = data.load_split(config, 'train')
  validation = data.load_split(config, 'validation')
  assert train.images.shape == (6, 48, 48, 1) and train.images.dtype == np.uint8
  assert len(validation) == 6
  # TFDS may reorder; every CSV row must come back intact under its own label.
  expected = sorted((label, pixels.astype(np.uint8).tobytes()) for label, pixels, usage in rows
                    if usage == 'Training')
  found = sorted((int(l), im.tobytes()) for l, im in zip(train.labels, train.images))
  assert found == expected
  # Prepared once: the array_record files are reused, not rewritten.
  record = next(p for p in (tmp_path / 'tfds').rglob('*train.array_record*'))
  mtime = os.stat(record).st_mtime_ns
  data.load_split(config, 'train')
  assert os.stat(record).st_mtime_ns == mtime


def test_missing_usage_prepares_and_asking_for_it_is_clear(tmp_path):
  csv_path = write_csv(tmp_path / 'no_private.csv', random_rows(4))
  config = _data_config(csv_path, tmp_path / 'tfds')
  assert len(data.load_split(config, 'train')) == 2
  with pytest.raises(FerJaxError, match=r"split 'test' \(PrivateTest rows\) is not in .*no_private"
                     r"\.csv, which holds only train \(Training\), validation \(PublicTest\)"):
    data.load_split(config, 'test')


def test_max_examples_takes_a_subset(tmp_path):
  config = _data_config(write_csv(tmp_path / 'f.csv', random_rows(10)), tmp_path / 'tfds')
  assert len(data.load_split(config, 'train', max_examples=3)) == 3


def _pixels(value='7'):
  return ' '.join([value] * 2304)


BAD_ROWS = [
    ('emotion,pixels,Usage\n9,{p},Training\n', r'line 2: field "emotion" is \'9\', but it must be an integer label 0-6'),
    ('emotion,pixels,Usage\n3,{p},Training\n3,1 2 3,Training\n', r'line 3: field "pixels" holds 3 values, but a 48x48 face needs 2304'),
    ('emotion,pixels,Usage\n3,{pbad},Training\n', r'line 2: field "pixels" has the value \'x1\' at position 1, but pixels must be integers 0-255'),
    ('emotion,pixels,Usage\n3,{p},Training\n\n3,,Training\n', r'line 4: field "pixels" is empty, but a 48x48 face needs 2304 values'),
    ('emotion,pixels,Usage\n3,{p},Training\n3,{p300},Training\n', r'line 3: field "pixels" has the value \'300\''),
    ('emotion,pixels,Usage\n3,{p},Validation\n', r'line 2: field "Usage" is \'Validation\', but it must be one of Training, PublicTest, PrivateTest'),
    ('emotion,pixels\n3,{p}\n', r"line 1: the header is 'emotion,pixels', but FER2013 needs 'emotion,pixels,Usage'"),
    ('emotion,pixels,Usage\n3,{p}\n', r'line 2: expected 3 fields'),
]


@pytest.mark.parametrize('text,message', BAD_ROWS)
def test_bad_csv_names_file_line_and_field_and_prepares_nothing(tmp_path, text, message):
  text = text.format(p=_pixels(), pbad=_pixels().replace('7', 'x1', 1),
                     p300=_pixels().replace('7', '300', 1))
  csv_path = tmp_path / 'bad.csv'
  csv_path.write_text(text)
  tfds_dir = tmp_path / 'tfds'
  with pytest.raises(FerJaxError, match=message) as error:
    data.load_split(_data_config(csv_path, tfds_dir), 'train')
  assert str(csv_path) in str(error.value)
  assert not [p for p in tfds_dir.rglob('*') if p.is_file() and 'fer2013' in str(p)
              and 'array_record' in p.name], 'a half-prepared dataset was left behind'
  assert not list(tfds_dir.rglob('incomplete*'))
  assert not (tfds_dir / 'fer2013').exists(), 'an empty dataset folder was left behind'



def test_unreadable_gzip(tmp_path):
  path = tmp_path / 'fer2013.csv.gz'
  path.write_bytes(gzip.compress(b'emotion,pixels,Usage\n' + b'1,2 3\n' * 500)[:60])
  with pytest.raises(FerJaxError, match=r'fer2013\.csv\.gz is not a readable gzip file'):
    fer_csv.read_fer2013_csv(str(path))


def test_missing_file_says_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.delenv('FER2013_PATH', raising=False)
  config = _data_config('', tmp_path / 'tfds')
  with pytest.raises(FerJaxError) as error:
    data.load_split(config, 'train')
  message = str(error.value)
  for needle in ('config.data.csv_path', '$FER2013_PATH', str(tmp_path / 'tfds' / 'downloads' / 'manual'),
                 'Kaggle', 'configs/smoke.py', '--config.data.source=generated'):
    assert needle in message
  config.csv_path = str(tmp_path / 'nope.csv')
  with pytest.raises(FerJaxError, match=r"config.data.csv_path='.*nope.csv' does not exist"):
    data.load_split(config, 'train')


def test_manual_dir_and_env_are_searched(tmp_path, monkeypatch):
  manual = tmp_path / 'tfds' / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  write_csv(manual / 'fer2013.csv', random_rows(4))
  monkeypatch.delenv('FER2013_PATH', raising=False)
  config = _data_config('', tmp_path / 'tfds')
  assert data.find_csv(config) == str(manual / 'fer2013.csv')
  env_csv = write_csv(tmp_path / 'env.csv.gz', random_rows(4))
  monkeypatch.setenv('FER2013_PATH', str(env_csv))
  assert data.find_csv(config) == str(env_csv)


def test_generated_faces_are_deterministic_and_cover_all_classes():
  images_a, labels_a = data.generated_faces(200, seed=1)
  images_b, labels_b = data.generated_faces(200, seed=1)
  np.testing.assert_array_equal(images_a, images_b)
  assert images_a.shape == (200, 48, 48, 1) and images_a.dtype == np.uint8
  assert set(labels_a.tolist()) == set(range(7))
  assert not np.array_equal(images_a, data.generated_faces(200, seed=2)[0])


def test_real_fer2013_splits_match_the_published_counts(real_csv, real_tfds_dir):
  config = _data_config(real_csv, real_tfds_dir)
  train = data.load_split(config, 'train')
  validation = data.load_split(config, 'validation')
  assert len(train) == 28_709 and len(validation) == 3_589
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=7),
                                [3995, 436, 4097, 7215, 4830, 3171, 4965])
  np.testing.assert_array_equal(np.bincount(validation.labels, minlength=7),
                                [467, 56, 496, 895, 653, 415, 607])
  assert 60 < train.images.mean() < 200 and train.images.std() > 30  # real faces, not blanks
  with pytest.raises(FerJaxError, match='PrivateTest'):
    data.load_split(config, 'test')


def _write_arrays(path, faces, labels, usage):
  import io
  import lzma
  buffer = io.BytesIO()
  np.savez(buffer, x=faces, y=labels, usage=usage)
  data_bytes = buffer.getvalue()
  if str(path).endswith('.xz'):
    with lzma.open(path, 'wb') as f:
      f.write(data_bytes)
  else:
    path.write_bytes(data_bytes)


@pytest.mark.parametrize('name', ['faces.npz', 'faces.npz.xz'])
def test_arrays_source_gives_each_usage_as_a_split(tmp_path, name):
  rng = np.random.default_rng(0)
  faces = rng.integers(0, 256, (10, 48, 48), dtype=np.uint8)
  labels = rng.integers(0, 7, 10).astype(np.uint8)
  usage = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 0], np.uint8)
  _write_arrays(tmp_path / name, faces, labels, usage)
  config = enhanced.get_config().data
  config.source, config.arrays_path = 'arrays', str(tmp_path / name)
  train = data.load_split(config, 'train')
  np.testing.assert_array_equal(train.images[..., 0], faces[usage == 0])
  np.testing.assert_array_equal(train.labels, labels[usage == 0])
  assert train.images.shape == (7, 48, 48, 1) and train.labels.dtype == np.int32
  assert len(data.load_split(config, 'validation', max_examples=2)) == 2
  with pytest.raises(FerJaxError, match=r'has no test faces .*it holds train, validation'):
    data.load_split(config, 'test')
  _write_arrays(tmp_path / 'bad.npz', faces, labels, usage[:5])
  config.arrays_path = str(tmp_path / 'bad.npz')
  with pytest.raises(FerJaxError, match=r'usage \(5,\); expected \(N, 48, 48\), \(N,\) and \(N,\)'):
    data.load_split(config, 'train')
  (tmp_path / 'junk.npz.xz').write_bytes(b'not xz')
  config.arrays_path = str(tmp_path / 'junk.npz.xz')
  with pytest.raises(FerJaxError, match='junk.npz.xz is not a readable'):
    data.load_split(config, 'train')
  config.arrays_path = str(tmp_path / 'missing.npz')
  with pytest.raises(FerJaxError, match=r"arrays_path .*missing.npz' is not a file"):
    data.load_split(config, 'train')


def test_real_arrays_file_has_the_readme_class_counts():
  from conftest import SHARED_CSV
  path = SHARED_CSV.parent / 'fer2013_arrays.npz.xz'
  if not path.exists():
    pytest.skip('the shared fer2013_arrays.npz.xz is not here')
  config = enhanced.get_config().data
  config.source, config.arrays_path = 'arrays', str(path)
  train = data.load_split(config, 'train')
  validation = data.load_split(config, 'validation')
  # ../shared/data/fer2013/README.md's table.
  assert np.bincount(train.labels).tolist() == [3995, 436, 4097, 7215, 4830, 3171, 4965]
  assert np.bincount(validation.labels).tolist() == [467, 56, 496, 895, 653, 415, 607]
