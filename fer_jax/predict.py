"""An emotion, a confidence and the 7 probabilities for each face image.

    python -m fer_jax.predict --pretrained face1.jpg photos/ [--json] [--detect_faces]
    python -m fer_jax.predict --workdir runs/quick face1.jpg

Folders are searched for images (recursively). A file that cannot be read or classified gets one
error line on stderr and the others are still classified; the exit status is 1 when any failed.
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
  flags.DEFINE_bool('json', False, 'One JSON line per file instead of a table.')
  flags.DEFINE_bool('detect_faces', False, 'Crop the largest face first (OpenCV Haar cascade; '
                    'pip install -e ".[faces]").')


def run(files: list[str], predictor: Any, as_json: bool, detect_faces: bool) -> int:
  """Classifies each file on its own so one bad file does not stop the rest; returns #failures."""
  failures = 0
  if not as_json:
    print(f'{"file":40s} {"emotion":9s} {"conf":>5s}  ' + ' '.join(f'{n[:7]:>7s}' for n in predictor.labels))
  for path in files:
    try:
      prediction = predictor.predict([path], detect_faces)[0]
    except FerJaxError as e:
      failures += 1
      print(f'error: {path}: {e}', file=sys.stderr)
      continue
    if as_json:
      print(json.dumps({'file': path, 'emotion': prediction.emotion,
                        'confidence': round(prediction.confidence, 6),
                        'probabilities': {k: round(v, 6) for k, v in prediction.probabilities.items()}}))
    else:
      print(f'{path:40s} {prediction.emotion:9s} {prediction.confidence:5.3f}  '
            + ' '.join(f'{p:7.3f}' for p in prediction.probabilities.values()))
  return failures


def main(argv: list[str]) -> None:
  files = expand_inputs(argv[1:])
  if not files:
    raise app.UsageError('name at least one image file or folder.')
  if bool(FLAGS.workdir) == FLAGS.pretrained:
    raise app.UsageError('give either --workdir (a training workdir) or --pretrained.')
  from fer_jax.predictor import Predictor
  predictor = (Predictor.pretrained() if FLAGS.pretrained else
               Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint))
  if run(files, predictor, FLAGS.json, FLAGS.detect_faces):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
