"""Reads FER2013 in its Kaggle CSV form (`emotion,pixels,Usage`), plain or gzipped.

Every malformed input stops with one sentence that names the file, the line and the fix. Parsing
goes through numpy in one pass; only when that fails are rows scanned one by one to find the culprit.
"""
import csv
import gzip
import io
import os
import zlib

import numpy as np

from fer_jax import EMOTIONS, FerJaxError

HEADER = ['emotion', 'pixels', 'Usage']
NUM_PIXELS = 48 * 48
USAGES = ('Training', 'PublicTest', 'PrivateTest')


def _open_text(path: str) -> io.TextIOBase:
  with open(path, 'rb') as raw:
    magic = raw.read(2)
  if magic == b'\x1f\x8b' or path.endswith('.gz'):
    return io.TextIOWrapper(gzip.open(path, 'rb'), encoding='utf-8', newline='')
  return open(path, encoding='utf-8', newline='')


def _read_rows(path: str) -> list[list[str]]:
  try:
    with _open_text(path) as f:
      return list(csv.reader(f))
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise FerJaxError(f'{path} is not a readable gzip file ({e}); download it again or pass '
                      'the uncompressed fer2013.csv.') from None
  except UnicodeDecodeError:
    raise FerJaxError(f'{path} is not a text CSV file; pass the Kaggle fer2013.csv '
                      '(emotion,pixels,Usage), plain or gzipped.') from None


def _row_error(path: str, line: int, row: list[str]) -> str | None:
  """The first problem with one data row, as a sentence, or None."""
  where = f'{path}, line {line}'
  if len(row) != 3:
    return f'{where}: expected 3 fields (emotion,pixels,Usage), found {len(row)}; fix or delete the row.'
  emotion, pixels, usage = row
  if emotion.strip() not in {str(i) for i in range(len(EMOTIONS))}:
    return f'{where}: field "emotion" is {emotion!r}, but it must be an integer label 0-6; fix the row.'
  values = pixels.split()
  if len(values) != NUM_PIXELS:
    return (f'{where}: field "pixels" holds {len(values)} values, but a 48x48 face needs {NUM_PIXELS}; '
            'fix or delete the row.')
  for value in values:
    if not value.isdigit() or int(value) > 255:
      return (f'{where}: field "pixels" has the value {value!r}, but pixels must be integers 0-255; '
              'fix the row.')
  if usage.strip() not in USAGES:
    return f'{where}: field "Usage" is {usage!r}, but it must be one of {", ".join(USAGES)}; fix the row.'
  return None


def read_fer2013_csv(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Returns {usage: (images uint8 (N, 48, 48, 1), labels int32 (N,))} for the usages present."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FerJaxError(f'{path} does not exist; pass the path of the Kaggle fer2013.csv (or .csv.gz).')
  rows = _read_rows(path)
  if not rows:
    raise FerJaxError(f'{path} is empty; pass the Kaggle fer2013.csv (emotion,pixels,Usage).')
  header = [h.strip() for h in rows[0]]
  if header != HEADER:
    raise FerJaxError(f'{path}, line 1: the header is {",".join(rows[0])!r}, but FER2013 needs '
                      f'{",".join(HEADER)!r}; fix the first line.')
  data = rows[1:]
  if not data:
    raise FerJaxError(f'{path} has a header but no rows; pass the full FER2013 CSV.')
  try:
    if any(len(row) != 3 for row in data):
      raise ValueError('field count')
    pixels = np.loadtxt(io.StringIO('\n'.join(row[1] for row in data)), dtype=np.int64, ndmin=2)
    labels = np.array([row[0] for row in data], dtype=np.int64)
    usages = np.array([row[2].strip() for row in data])
    if (pixels.shape[1] != NUM_PIXELS or pixels.min() < 0 or pixels.max() > 255
        or labels.min() < 0 or labels.max() >= len(EMOTIONS) or not np.isin(usages, USAGES).all()):
      raise ValueError('out of range')
  except ValueError:
    for index, row in enumerate(data):
      message = _row_error(path, index + 2, row)
      if message:
        raise FerJaxError(message) from None
    raise
  images = pixels.astype(np.uint8).reshape(-1, 48, 48, 1)
  return {usage: (images[usages == usage], labels[usages == usage].astype(np.int32))
          for usage in USAGES if (usages == usage).any()}
