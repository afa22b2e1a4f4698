"""Writes FER2013's arrays file from the Kaggle CSV, for machines without the CSV or TFDS.

    python -m fer_jax.data.arrays --csv fer2013.csv.gz --out fer2013_arrays.npz.xz

The file holds `x` uint8 (N, 48, 48), `y` int32 (N,) labels and `usage` uint8 (N,), 0 / 1 / 2 for
Training / PublicTest / PrivateTest (the order of fer_jax.data.SPLITS), faces in CSV order within
each usage; `.npz.xz` is xz-compressed, `.npz` is not (FER2013's 32,298 Training and PublicTest
faces: 57.0 and 71 MiB). Training reads it with `--config.data.source=arrays
--config.data.arrays_path=FILE` (fer_jax.data.load_arrays), and evaluate takes it as --data. The CSV goes through fer_jax.data.csv, so a malformed row is one
sentence naming its line. An existing --out is kept unless --overwrite is given; the file appears
whole or not at all. Exit status (fer_jax.cli): 0 written, 1 bad input, 2 wrong command line.
"""
import io
import lzma
import os

import numpy as np
from absl import flags

from fer_jax import FerJaxError, cli

SUFFIXES = ('.npz', '.npz.xz')


def to_arrays(by_usage: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
  """fer_jax.data.csv.read_fer2013_csv's {usage: (images, labels)} as the file's x, y, usage."""
  from fer_jax.data import SPLIT_USAGE
  codes = {usage: code for code, usage in enumerate(SPLIT_USAGE.values())}
  present = [usage for usage in codes if usage in by_usage]
  return {'x': np.concatenate([by_usage[u][0][..., 0] for u in present]).astype(np.uint8),
          'y': np.concatenate([by_usage[u][1] for u in present]).astype(np.int32),
          'usage': np.concatenate([np.full(len(by_usage[u][1]), codes[u], np.uint8)
                                   for u in present])}


def write_arrays(csv_path: str, out: str, overwrite: bool = False) -> dict[str, int]:
  """Reads the CSV and writes the arrays file at `out` (.npz or .npz.xz). Returns faces per
  usage. Raises FerJaxError for a bad CSV, a wrong suffix or an existing `out` without
  `overwrite`."""
  from fer_jax.data.csv import read_fer2013_csv
  if not out.endswith(SUFFIXES):
    raise FerJaxError(f'--out={out}: name a .npz.xz (compressed) or .npz file, e.g. '
                      'fer2013_arrays.npz.xz.')
  if os.path.exists(out) and not overwrite:
    raise FerJaxError(f'--out={out} exists; pass --overwrite to replace it, or name another file.')
  cli.prepare_output(out, '--out')
  by_usage = read_fer2013_csv(csv_path)
  buffer = io.BytesIO()
  np.savez(buffer, **to_arrays(by_usage))
  raw = buffer.getvalue()
  temporary = f'{out}.tmp{os.getpid()}'
  try:
    with open(temporary, 'wb') as f:
      f.write(lzma.compress(raw) if out.endswith('.xz') else raw)
    os.replace(temporary, out)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return {usage: len(labels) for usage, (_, labels) in by_usage.items()}


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  from absl import app
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  counts = write_arrays(FLAGS.csv, FLAGS.out, FLAGS.overwrite)
  print(f'wrote {FLAGS.out} ({os.path.getsize(FLAGS.out) / 2**20:.1f} MiB): '
        + ', '.join(f'{n} {usage}' for usage, n in counts.items()))


if __name__ == '__main__':
  flags.DEFINE_string('csv', None, 'The Kaggle FER2013 CSV (.csv or .csv.gz).', required=True)
  flags.DEFINE_string('out', 'fer2013_arrays.npz.xz', 'The arrays file to write (.npz.xz or .npz).')
  flags.DEFINE_bool('overwrite', False, 'Replace --out if it exists.')
  cli.run(main, fast_cpu=None, uses_jax=False)
