"""Splits as in-memory arrays, from FER2013 (via the TFDS builder, or the arrays file for machines
without TFDS) or generated faces.

The whole of FER2013 is ~83 MB as uint8, so each split is held as arrays and batches are gathered by
index; no input pipeline framework is needed.
"""
import dataclasses
import hashlib
import os
from typing import Any

import ml_collections
import numpy as np

from fer_jax import EMOTIONS, FerJaxError

MANUAL_NAMES = ('fer2013.csv', 'fer2013.csv.gz')
# The one table of split names: split -> FER2013's Usage value; its order is the arrays file's
# `usage` code (0, 1, 2).
SPLIT_USAGE = {'train': 'Training', 'validation': 'PublicTest', 'test': 'PrivateTest'}
SPLITS = tuple(SPLIT_USAGE)


def describe_splits(usages: set[str] | dict) -> str:
  """'train (Training), validation (PublicTest)' for the usages present, in split order."""
  return ', '.join(f'{split} ({usage})' for split, usage in SPLIT_USAGE.items() if usage in usages)


@dataclasses.dataclass(frozen=True)
class Split:
  name: str
  images: np.ndarray  # uint8 (N, 48, 48, 1)
  labels: np.ndarray  # int32 (N,), indices into classes
  classes: tuple[str, ...] = EMOTIONS

  def __len__(self) -> int:
    return len(self.labels)

  def fingerprint(self) -> dict[str, Any]:
    """{'faces': N, 'sha256': 16 hex digits of the faces and labels}: what a resumed run and the
    processes of one run compare to be sure they train on the same faces."""
    digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
    digest.update(np.ascontiguousarray(self.labels).tobytes())
    return {'faces': len(self), 'sha256': digest.hexdigest()[:16]}


def tfds_dir(data_config: ml_collections.ConfigDict) -> str:
  return os.path.expanduser(data_config.tfds_dir or os.environ.get('TFDS_DATA_DIR')
                            or '~/tensorflow_datasets')


def _missing(path: str) -> str:
  """Why a CSV path is not a file: it is a folder, or nothing is there."""
  return 'is a folder, not a CSV file' if os.path.isdir(path) else 'does not exist'


def find_csv(data_config: ml_collections.ConfigDict) -> str:
  """config.data.csv_path, then $FER2013_PATH, then the TFDS manual dir."""
  if data_config.csv_path:
    if not os.path.isfile(os.path.expanduser(data_config.csv_path)):
      raise FerJaxError(f'config.data.csv_path={data_config.csv_path!r} '
                        f'{_missing(os.path.expanduser(data_config.csv_path))}; pass the '
                        'path of the Kaggle fer2013.csv (or .csv.gz).')
    return os.path.expanduser(data_config.csv_path)
  env_path = os.environ.get('FER2013_PATH', '')
  if env_path:
    if not os.path.isfile(os.path.expanduser(env_path)):
      raise FerJaxError(f'FER2013_PATH={env_path!r} {_missing(os.path.expanduser(env_path))}; '
                        'point it at the Kaggle '
                        'fer2013.csv (or .csv.gz).')
    return os.path.expanduser(env_path)
  manual_dir = os.path.join(tfds_dir(data_config), 'downloads', 'manual')
  for name in MANUAL_NAMES:
    if os.path.isfile(os.path.join(manual_dir, name)):
      return os.path.join(manual_dir, name)
  raise FerJaxError(
      'FER2013 was not found (looked at config.data.csv_path, $FER2013_PATH and '
      f'{manual_dir}/fer2013.csv[.gz]); download fer2013.csv from Kaggle\'s "Challenges in '
      'Representation Learning: Facial Expression Recognition Challenge" and set FER2013_PATH to it '
      '(or put it in that folder), or try configs/smoke.py on generated faces with '
      '--config.data.source=generated.')


def generated_faces(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Cartoon faces whose mouth and brows depend on the class: learnable, for smoke runs and tests."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 7, num).astype(np.int32)
  yy, xx = np.mgrid[0:48, 0:48].astype(np.float32)
  head = (((yy - 24) / 21) ** 2 + ((xx - 24) / 17) ** 2 < 1).astype(np.float32)
  images = np.empty((num, 48, 48, 1), np.uint8)
  for i, label in enumerate(labels):
    curve = (label - 3) / 3.0                        # mouth curvature from -1 to 1
    mouth_y = 34 + curve * ((xx - 24) / 8) ** 2 - 2 * curve
    mouth = (np.abs(yy - mouth_y) < 1.2) & (np.abs(xx - 24) < 8)
    brow_y = 14 + (label % 3) - 1 + (xx - 24) * 0.15 * (label % 2 * 2 - 1)
    brows = (np.abs(yy - brow_y) < 1) & (np.abs(np.abs(xx - 24) - 8) < 4)
    eyes = ((yy - 19) ** 2 + (np.abs(xx - 24) - 8) ** 2) < 4
    face = 60 + 120 * head - 90 * (mouth | brows | eyes)
    face += rng.normal(0, 12, face.shape) + rng.uniform(-30, 30)
    images[i, ..., 0] = np.clip(np.roll(face, rng.integers(-2, 3, 2), (0, 1)), 0, 255)
  return images, labels


def _subset(split: Split, max_examples: int) -> Split:
  if max_examples and max_examples < len(split):
    return dataclasses.replace(split, images=split.images[:max_examples],
                               labels=split.labels[:max_examples])
  return split


def load_split(data_config: ml_collections.ConfigDict, split: str, max_examples: int = 0) -> Split:
  """One split ('train', 'validation' or 'test') as arrays, the first max_examples if > 0."""
  if split not in SPLITS:
    raise FerJaxError(f'split {split!r} is unknown; use one of {", ".join(SPLITS)} (FER2013 Usage '
                      'Training, PublicTest, PrivateTest).')
  if data_config.source == 'generated':
    sizes = {'train': data_config.generated_train_size, 'validation': data_config.generated_eval_size,
             'test': data_config.generated_eval_size}
    images, labels = generated_faces(sizes[split], seed=list(sizes).index(split))
    return _subset(Split(split, images, labels), max_examples)
  if data_config.source == 'arrays':
    images, labels = load_arrays(data_config.arrays_path
                                 or os.environ.get('FER2013_ARRAYS', ''), split)
    return _subset(Split(split, images, labels), max_examples)
  if data_config.source == 'images':
    if not data_config.images_path or not os.path.isdir(data_config.images_path):
      raise FerJaxError(f'config.data.images_path={data_config.images_path!r} is not a folder; '
                        'point it at an image-folder tree <split>/<class>/*.png|jpg.')
    from fer_jax import faces  # OpenCV stays off the import path of the other sources
    from fer_jax.data.images import read_image_folder
    images, labels, classes = read_image_folder(data_config.images_path, split, faces.dataset_face)
    return _subset(Split(split, images, labels, tuple(classes)), max_examples)
  if data_config.source != 'fer2013':
    raise FerJaxError(f'config.data.source={data_config.source!r} is unknown; use "fer2013", '
                      '"images", "arrays" or "generated".')
  from fer_jax.data import fer2013  # TFDS stays off the import path of generated-data runs.
  builder = fer2013.prepare(find_csv(data_config), tfds_dir(data_config))
  images, labels = fer2013.load_split(builder, split)
  return _subset(Split(split, images, labels), max_examples)




def load_arrays(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """One split of FER2013 stored as arrays (`x` uint8 (N, 48, 48), `y` labels, `usage` 0/1/2 for
  Training / PublicTest / PrivateTest), as `.npz` or xz-compressed `.npz.xz`: no CSV parsing and no
  TFDS, for accelerator machines that have neither the CSV nor TensorFlow Datasets."""
  import io
  import lzma
  where = 'config.data.arrays_path (or $FER2013_ARRAYS)'
  if not path or not os.path.isfile(path):
    raise FerJaxError(f'{where}={path!r} is not a file; point it at fer2013_arrays.npz[.xz].')
  try:
    raw = lzma.open(path).read() if path.endswith('.xz') else open(path, 'rb').read()
    with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
      missing = {'x', 'y', 'usage'} - set(arrays.files)
      if missing:
        raise FerJaxError(f'{path} has no {", ".join(sorted(missing))} array; a FER2013 arrays file '
                          'holds x (N, 48, 48) uint8, y (N,) and usage (N,).')
      faces, labels, usage = arrays['x'], arrays['y'], arrays['usage']
  except (OSError, ValueError, lzma.LZMAError) as e:
    raise FerJaxError(f'{path} is not a readable .npz / .npz.xz file ({e}); pass fer2013_arrays.npz.xz.') from e
  if faces.shape[1:] != (48, 48) or not len(faces) == len(labels) == len(usage):
    raise FerJaxError(f'{path}: x has shape {faces.shape}, y {labels.shape}, usage {usage.shape}; '
                      'expected (N, 48, 48), (N,) and (N,).')
  code = SPLITS.index(split)  # the arrays file's usage codes follow SPLITS
  chosen = usage == code
  if not chosen.any():
    present = [name for index, name in enumerate(SPLITS) if (usage == index).any()]
    raise FerJaxError(f'{path} has no {split} faces (usage code {code}); it holds '
                      f'{", ".join(present)}.')
  return faces[chosen].astype(np.uint8)[..., None], labels[chosen].astype(np.int32)
