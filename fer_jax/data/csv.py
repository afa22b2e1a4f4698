"""Reads FER2013 in its Kaggle CSV form (`emotion,pixels,Usage`), plain or gzipped.

What spreadsheets add harmlessly is accepted: a UTF-8 byte-order mark (Excel's "CSV UTF-8"), CRLF
line ends, blank lines (or rows of empty fields) anywhere, spaces around fields, header names in
any case, columns in any order and extra columns (ignored). Every malformed input stops with one
sentence that names the file, the line (as an editor numbers it, header included) and the fix.

Parsing goes through numpy in one pass over rows in Kaggle's own form; anything else (a bad row,
tabs between pixels) is scanned row by row, which either names the first bad row or, when every
row is valid, parses the normalised text. So the fast path only decides speed, never the result.
"""
import csv
import gzip
import io
import os
import re
import zlib

import numpy as np

from fer_jax import EMOTIONS, FerJaxError

HEADER = ['emotion', 'pixels', 'Usage']
NUM_PIXELS = 48 * 48
USAGES = ('Training', 'PublicTest', 'PrivateTest')
LABELS = tuple(str(i) for i in range(len(EMOTIONS)))
_COLUMN_HINTS = {'emotion': 'the label 0-6', 'pixels': f'{NUM_PIXELS} grey values 0-255',
                 'Usage': ', '.join(USAGES[:-1]) + f' or {USAGES[-1]}'}
_NOT_FAST = re.compile(r'[^0-9 \n]')  # Kaggle's pixels: digits and single spaces

Row = tuple[int, list[str]]  # (the line the row starts on, its fields)
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # pixels (N, 2304) uint8, labels, usages


def _open_text(path: str) -> io.TextIOBase:
  """newline='' lets the csv module see CRLF; utf-8-sig drops a byte-order mark if there is one."""
  with open(path, 'rb') as raw:
    magic = raw.read(2)
  if magic == b'\x1f\x8b' or path.endswith('.gz'):
    return io.TextIOWrapper(gzip.open(path, 'rb'), encoding='utf-8-sig', newline='')
  return open(path, encoding='utf-8-sig', newline='')


def _read_rows(path: str) -> list[Row]:
  """The non-blank rows with their line numbers; blank lines are counted but not returned."""
  rows: list[Row] = []
  end = 0  # the last line read so far
  try:
    with _open_text(path) as f:
      reader = csv.reader(f)
      for fields in reader:
        start, end = end + 1, reader.line_num
        if any(field.strip() for field in fields):
          rows.append((start, fields))
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise FerJaxError(f'{path} is not a readable gzip file ({e}); download it again or pass '
                      'the uncompressed fer2013.csv.') from None
  except UnicodeDecodeError as e:
    byte = e.object[e.start]
    raise FerJaxError(f'{path} is not UTF-8 text (it holds the byte 0x{byte:02x}, as Latin-1 or '
                      'Windows-1252 files do); save it as "CSV UTF-8", or pass the Kaggle '
                      'fer2013.csv (emotion,pixels,Usage), plain or gzipped.') from None
  except csv.Error as e:
    raise FerJaxError(f'{path}, line {end + 1}: the row cannot be read as CSV ({e}); close its '
                      'quotes or delete it.') from None
  except OSError as e:
    raise FerJaxError(f'{path} cannot be read ({e.strerror}); check its permissions or pass '
                      'another copy.') from None
  return rows


def _columns(path: str, line: int, header: list[str]) -> list[int]:
  """Where emotion, pixels and Usage are in the header; names compare without case and spaces."""
  where = f'{path}, line {line}'
  names = [name.strip().lower() for name in header]
  shown = ','.join(name.strip() for name in header)
  shown = shown if len(shown) <= 60 else shown[:57] + '...'
  if len(names) == 1 and ';' in names[0]:
    raise FerJaxError(f'{where}: the header {shown!r} is separated by semicolons, but FER2013 CSVs '
                      'are separated by commas; save it as comma-separated CSV.')
  if names[0].isdigit():
    raise FerJaxError(f'{where} is a data row, but the file must start with the header '
                      f'{",".join(HEADER)!r}; add that header as the first line.')
  missing = [name for name in HEADER if name.lower() not in names]
  if missing:
    wanted = ' and '.join(f'the {name} column ({_COLUMN_HINTS[name]})' for name in missing)
    raise FerJaxError(f'{where}: the header is {shown!r}, but FER2013 needs {",".join(HEADER)!r}; '
                      f'add {wanted}.')
  for name in HEADER:
    if names.count(name.lower()) > 1:
      raise FerJaxError(f'{where}: the header {shown!r} names the {name} column '
                        f'{names.count(name.lower())} times; keep one.')
  return [names.index(name.lower()) for name in HEADER]


def _shown(value: str) -> str:
  """A field as the message quotes it: 'empty', or its repr cut to a readable length."""
  if not value:
    return 'empty'
  return repr(value if len(value) <= 24 else value[:20] + '...')


def _is_pixel(value: str) -> bool:
  digits = value.lstrip('0')
  return value.isascii() and value.isdigit() and len(digits) <= 3 and int(digits or 0) <= 255


def _row_error(where: str, row: list[str], picked: list[str] | None,
               header: list[str]) -> str | None:
  """The first problem with one data row, as a sentence, or None."""
  if picked is None:
    names = ','.join(name.strip() for name in header)
    return (f'{where}: expected {len(header)} fields ({names}), found {len(row)}; fix or delete '
            'the row.')
  emotion, pixels, usage = picked
  if emotion not in LABELS:
    return (f'{where}: field "emotion" is {_shown(emotion)}, but it must be an integer label '
            '0-6; fix the row.')
  if not pixels:
    return (f'{where}: field "pixels" is empty, but a 48x48 face needs {NUM_PIXELS} values 0-255; '
            'fix or delete the row.')
  values = pixels.split()
  if len(values) != NUM_PIXELS:
    return (f'{where}: field "pixels" holds {len(values)} values, but a 48x48 face needs '
            f'{NUM_PIXELS}; fix or delete the row.')
  for position, value in enumerate(values, 1):
    if not _is_pixel(value):
      return (f'{where}: field "pixels" has the value {_shown(value)} at position {position}, '
              'but pixels must be integers 0-255; fix the row.')
  if usage not in USAGES:
    return (f'{where}: field "Usage" is {_shown(usage)}, but it must be one of '
            f'{", ".join(USAGES)}; fix the row.')
  return None


def _parse(picked: list[list[str]]) -> Arrays | None:
  """The arrays when every row is in Kaggle's form (checked here), else None."""
  labels = np.array([fields[0] for fields in picked])
  usages = np.array([fields[2] for fields in picked])
  if not (np.isin(labels, LABELS).all() and np.isin(usages, USAGES).all()
          and all(fields[1] for fields in picked)):
    return None
  text = '\n'.join(fields[1] for fields in picked)  # one line per row: no field is empty
  if _NOT_FAST.search(text):
    return None
  try:
    pixels = np.loadtxt(io.StringIO(text), dtype=np.int16, ndmin=2, comments=None)
  except ValueError:  # ragged rows, or a value beyond int16
    return None
  if pixels.shape != (len(picked), NUM_PIXELS) or pixels.min() < 0 or pixels.max() > 255:
    return None
  return pixels.astype(np.uint8), labels.astype(np.int32), usages


def read_fer2013_csv(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Returns {usage: (images uint8 (N, 48, 48, 1), labels int32 (N,))} for the usages present."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    what = 'is a folder, not a CSV file' if os.path.isdir(path) else 'does not exist'
    raise FerJaxError(f'{path} {what}; pass the path of the Kaggle fer2013.csv (or .csv.gz).')
  rows = _read_rows(path)
  if not rows:
    raise FerJaxError(f'{path} is empty; pass the Kaggle fer2013.csv (emotion,pixels,Usage).')
  (header_line, header), data = rows[0], rows[1:]
  columns = _columns(path, header_line, header)
  if not data:
    raise FerJaxError(f'{path} has a header but no rows; pass the full FER2013 CSV.')
  picked = [[row[i].strip() for i in columns] if len(row) == len(header) else None
            for _, row in data]
  arrays = None if None in picked else _parse(picked)
  if arrays is None:  # find the first bad row; if there is none, parse the rows' values as they are
    for (line, row), fields in zip(data, picked):
      message = _row_error(f'{path}, line {line}', row, fields, header)
      if message:
        raise FerJaxError(message)
    arrays = _parse([[emotion, ' '.join(pixels.split()), usage]
                     for emotion, pixels, usage in picked])
    if arrays is None:  # unreachable: every row passed the checks _parse makes
      raise FerJaxError(f'{path} passed every row check but could not be parsed; please report it '
                        "to fer_jax's maintainers with the file.")
  pixels, labels, usages = arrays
  images = pixels.reshape(-1, 48, 48, 1)
  return {usage: (images[usages == usage], labels[usages == usage])
          for usage in USAGES if (usages == usage).any()}
