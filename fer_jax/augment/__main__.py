"""`python -m fer_jax.augment --data PATH --out grid.png`: real faces and augmented versions.

The first column holds real Training faces, the others augmented versions of the same face (each
with its own key), one row per face, so a person can judge the magnitudes by eye.
"""
from absl import flags

from fer_jax import cli

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  del argv
  import jax
  import numpy as np
  from PIL import Image
  from configs import enhanced
  from fer_jax import FerJaxError, augment
  from fer_jax.data.csv import read_fer2013_csv
  config = enhanced.get_config().augment
  if FLAGS.steps is not None:
    config.steps = FLAGS.steps
  config.strength_start = config.strength_end = FLAGS.strength
  augment.validate(config)
  by_usage = read_fer2013_csv(FLAGS.data)
  if 'Training' not in by_usage:
    raise FerJaxError(f'{FLAGS.data} has no Training rows; pass a FER2013 CSV that has some.')
  faces, _ = by_usage['Training']
  faces = faces[:FLAGS.rows]
  run = jax.jit(lambda f, k: augment.augment_faces(f, k, FLAGS.strength, config))
  columns = [faces[..., 0]]
  for column in range(FLAGS.columns):
    out = np.asarray(run(faces, jax.random.key(column)))
    columns.append(np.clip(np.round((out[..., 0] + 1) * 127.5), 0, 255).astype(np.uint8))
  gap = 2
  grid = np.full((FLAGS.rows * (48 + gap), len(columns) * (48 + gap) + 6), 255, np.uint8)
  for c, column in enumerate(columns):
    x = c * (48 + gap) + (6 if c else 0)
    for r, face in enumerate(column):
      grid[r * (48 + gap):r * (48 + gap) + 48, x:x + 48] = face
  Image.fromarray(grid).resize((grid.shape[1] * FLAGS.zoom, grid.shape[0] * FLAGS.zoom),
                               Image.Resampling.NEAREST).save(FLAGS.out)
  print(f'wrote {FLAGS.out}: {FLAGS.rows} faces x {FLAGS.columns} augmentations (strength {FLAGS.strength})')


if __name__ == '__main__':
  flags.DEFINE_string('data', None, 'FER2013 CSV (.csv or .csv.gz) with Training rows.', required=True)
  flags.DEFINE_string('out', 'augment_grid.png', 'Where to write the PNG.')
  flags.DEFINE_integer('rows', 8, 'Faces (rows).')
  flags.DEFINE_integer('columns', 7, 'Augmented versions per face.')
  flags.DEFINE_float('strength', 1.0, 'Augmentation strength in [0, 1].')
  flags.DEFINE_string('steps', None, 'Steps to apply (default: the config\'s).')
  flags.DEFINE_integer('zoom', 2, 'Pixel zoom of the saved grid.')
  cli.run(main)
