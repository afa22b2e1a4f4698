"""The emotion of every face in photos and face crops: one row per face, with its box, the emotion,
a calibrated confidence and every class's probability.

    python -m fer_jax.predict --pretrained group.jpg face.png photos/ [--json]
    python -m fer_jax.predict --workdir runs/quick --tta ten_crop --detector haar photo.jpg

Images up to 64 px on their longer side are taken as face crops; larger ones are searched for
faces (--no_detect takes every image as a crop). Folders are searched for images (recursively). A
file that cannot be read, or a photo with no face, gets one `error:` line on stderr and the others
are still classified. Exit status: 0 when every file gave a face, 1 otherwise, 2 for bad flags.
In Python: `from fer_jax.predict import Predictor` (fer_jax/predictor.py).
"""
import json
import os
import sys
from typing import Any, Iterable

from absl import app, flags

from fer_jax import FerJaxError, cli

_LIBRARY = ('Predictor', 'Prediction', 'load_and_predict')


def __getattr__(name: str) -> Any:
  """`from fer_jax.predict import Predictor` without importing JAX for `--help`."""
  if name in _LIBRARY:
    from fer_jax import predictor
    return getattr(predictor, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def expand_inputs(paths: Iterable[str]) -> list[str]:
  """Files as given; folders replaced by the images inside them (sorted, recursive)."""
  from fer_jax.data.images import IMAGE_EXTENSIONS
  files = []
  for path in paths:
    if os.path.isdir(path):
      for folder, _, names in sorted(os.walk(path)):
        files += [os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    else:
      files.append(path)
  return files


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so importing this module defines no global flags."""
  flags.DEFINE_string('workdir', None, 'Training workdir holding checkpoints/.')
  flags.DEFINE_string('checkpoint', 'best', '"best", "latest" or a step number (with --workdir).')
  flags.DEFINE_bool('pretrained', False, 'Use the weights that ship with fer_jax instead of a workdir.')
  flags.DEFINE_bool('json', False, 'One JSON line per face instead of a table.')
  flags.DEFINE_bool('no_detect', False, 'Take every image as a face crop: no face search.')
  flags.DEFINE_enum('detector', 'blazeface', ['blazeface', 'haar'], 'Face detector for photos.')
  flags.DEFINE_bool('no_align', False, 'Do not turn crops so the eyes are level.')
  flags.DEFINE_enum('tta', 'ten_crop', ['none', 'flip', 'ten_crop'], 'Test-time augmentation: '
                    'ten_crop (the default) costs ~25 ms a face on a 2-core CPU, flip ~6, none ~4.')


def run(files: list[str], predictor: Any, as_json: bool, detect: bool | None) -> int:
  """Classifies each file on its own so one bad file does not stop the rest; returns #failures."""
  failures = 0
  if not as_json:
    print(f'{"file":32s} {"face":>4s} {"box (x, y, w, h)":>20s} {"emotion":9s} {"conf":>5s}  '
          + ' '.join(f'{n[:7]:>7s}' for n in predictor.labels))
  for path in files:
    try:
      found = predictor.predict_faces(path, detect)
      if not found:
        raise FerJaxError(f'no face found ({predictor.detector}); if the image is a face crop '
                          'already, pass --no_detect.')
    except FerJaxError as e:
      failures += 1
      print(f'error: {e}' if path in str(e) else f'error: {path}: {e}', file=sys.stderr)
      continue
    for index, prediction in enumerate(found):
      box = list(prediction.box) if prediction.box else None
      if as_json:
        print(json.dumps({'file': path, 'face': index, 'box': box, 'emotion': prediction.emotion,
                          'confidence': round(prediction.confidence, 6),
                          'probabilities': {k: round(v, 6)
                                            for k, v in prediction.probabilities.items()}}))
      else:
        where = ', '.join(map(str, box)) if box else 'whole image'
        print(f'{path:32s} {index:4d} {where:>20s} {prediction.emotion:9s} '
              f'{prediction.confidence:5.3f}  '
              + ' '.join(f'{p:7.3f}' for p in prediction.probabilities.values()))
  return failures


def main(argv: list[str]) -> None:
  files = expand_inputs(argv[1:])
  if not files:
    raise app.UsageError('name at least one image file or folder.')
  if bool(FLAGS.workdir) == FLAGS.pretrained:
    raise app.UsageError('give either --workdir (a training workdir) or --pretrained.')
  from fer_jax.predictor import Predictor
  options = dict(tta=FLAGS.tta, detector=FLAGS.detector, align=not FLAGS.no_align)
  predictor = (Predictor.pretrained(**options) if FLAGS.pretrained else
               Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint, **options))
  if run(files, predictor, FLAGS.json, False if FLAGS.no_detect else None):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
