"""A TFDS builder for FER2013 that needs no TensorFlow.

Features are `tfds.features.Tensor` (uint8 48x48x1) and the file format is array_record, the
combination TFDS can write and read back as a random-access data source without TensorFlow. The
builder config is named after the CSV's path, size and mtime, so a different or edited CSV prepares
anew instead of silently reusing stale records.
"""
import contextlib
import fcntl
import glob
import hashlib
import io
import os
import shutil

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from fer_jax import EMOTIONS, FerJaxError
from fer_jax.data import SPLIT_USAGE, describe_splits
from fer_jax.data.csv import read_fer2013_csv

_MANUAL_INSTRUCTIONS = (
    "Download fer2013.csv from Kaggle's 'Challenges in Representation Learning: Facial Expression "
    "Recognition Challenge' and pass its path (config.data.csv_path or the FER2013_PATH environment "
    'variable), or place fer2013.csv / fer2013.csv.gz in the TFDS manual dir.')


def csv_fingerprint(csv_path: str) -> str:
  stat = os.stat(csv_path)
  key = f'{os.path.abspath(csv_path)}:{stat.st_size}:{stat.st_mtime_ns}'
  return hashlib.sha1(key.encode()).hexdigest()[:12]


class Fer2013(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """FER2013 from its Kaggle CSV: train = Training, validation = PublicTest, test = PrivateTest."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS

  def __init__(self, *, csv_path: str, **kwargs):
    self._csv_path = csv_path
    config = tfds.core.BuilderConfig(name=f'csv_{csv_fingerprint(csv_path)}',
                                     description=f'Prepared from {os.path.abspath(csv_path)}')
    super().__init__(config=config, file_format='array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='FER2013 facial expressions, 48x48 grey faces, 7 classes.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(48, 48, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=list(EMOTIONS)),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The CSV is given by path; nothing is downloaded.
    by_usage = read_fer2013_csv(self._csv_path)
    missing = [f'{split} ({usage})' for split, usage in SPLIT_USAGE.items() if usage not in by_usage]
    if missing:
      logging.warning('%s has no rows for %s; those splits are not prepared.', self._csv_path,
                      ', '.join(missing))
    return {split: self._generate_examples(*by_usage[usage])
            for split, usage in SPLIT_USAGE.items() if usage in by_usage}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image, 'label': int(label)}


def _remove_incomplete(config_dir: str) -> None:
  for partial in glob.glob(os.path.join(config_dir, 'incomplete*')):
    shutil.rmtree(partial, ignore_errors=True)


def prepare(csv_path: str, tfds_dir: str) -> Fer2013:
  """Prepares (once) and returns the builder. Processes preparing the same CSV take turns (a file
  lock), so the one holding the lock can remove what a killed preparation left; a failure leaves
  nothing half written."""
  builder = Fer2013(csv_path=csv_path, data_dir=tfds_dir)
  if builder.is_prepared():
    return builder
  config_dir = os.path.dirname(builder.data_dir)
  existed = os.path.isdir(config_dir)
  os.makedirs(config_dir, exist_ok=True)
  lock_path = os.path.join(config_dir, '.prepare.lock')
  with open(lock_path, 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # waits while another process prepares
    builder = Fer2013(csv_path=csv_path, data_dir=tfds_dir)
    if builder.is_prepared():
      return builder
    _remove_incomplete(config_dir)  # left by a preparation that was killed
    logging.info('preparing %s once for TFDS in %s', csv_path, builder.data_dir)
    tfds.disable_progress_bar()  # tqdm's cursor codes would fill log files
    try:
      # TFDS prints "Downloading and preparing dataset..." to stdout; nothing is downloaded.
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.path.dirname(csv_path)))
    except BaseException:
      _remove_incomplete(config_dir)
      if not existed:
        shutil.rmtree(config_dir, ignore_errors=True)
        parent = os.path.dirname(config_dir)
        if os.path.isdir(parent) and not os.listdir(parent):
          os.rmdir(parent)
      raise
  return builder


def load_split(builder: Fer2013, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All of one split as (images uint8 (N, 48, 48, 1), labels int32 (N,)), in TFDS order."""
  if split not in builder.info.splits:
    present = describe_splits({SPLIT_USAGE[s] for s in builder.info.splits})
    raise FerJaxError(f'split {split!r} ({SPLIT_USAGE.get(split, "?")} rows) is not in '
                      f'{builder._csv_path}, which holds only {present}; pick one of those splits '
                      'or pass a CSV that has it.')
  source = builder.as_data_source(split)
  examples = source.__getitems__(list(range(len(source))))
  images = np.stack([e['image'] for e in examples]).astype(np.uint8)
  labels = np.array([e['label'] for e in examples], dtype=np.int32)
  return images, labels
