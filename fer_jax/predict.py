"""The emotion of every face in photos, face crops and videos: one row per face (per sampled frame),
with its box, the emotion, a calibrated confidence and every class's probability.

    python -m fer_jax.predict --pretrained group.jpg face.png photos/ [--json] [--csv out.csv]
    python -m fer_jax.predict --pretrained clip.mp4 --every 5 --annotate clip_annotated.mp4
    python -m fer_jax.predict --workdir runs/quick --tta flip --detector haar photo.jpg

Images up to 64 px on their longer side are taken as face crops; larger ones are searched for
faces, and one up to 160 px with no face found is taken as a crop too (--no_detect takes every
image as a crop). Folders are searched for images (recursively). A
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
  from fer_jax.video import VIDEO_EXTENSIONS
  files = []
  for path in paths:
    if os.path.isdir(path):
      for folder, _, names in sorted(os.walk(path)):
        files += [os.path.join(folder, n) for n in sorted(names)
                  if n.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)]
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
  flags.DEFINE_integer('camera', None, 'Read this camera (OpenCV index, e.g. 0) instead of files.')
  flags.DEFINE_integer('every', 1, 'Videos: classify every N-th frame.')
  flags.DEFINE_float('smooth', 0.5, 'Videos: weight of the newest frame in each face track\'s '
                     'running average of probabilities (1 = no smoothing).')
  flags.DEFINE_string('csv', None, 'Also write every row (photos and video frames) to this CSV.')
  flags.DEFINE_string('annotate', None, 'Videos: write the video with boxes, emotions and '
                      'confidences drawn to this .mp4 (one video at a time).')


def _photo_rows(predictor: Any, path: str, detect: bool | None) -> list[dict]:
  found = predictor.predict_faces(path, detect)
  if not found:
    raise FerJaxError(f'no face found ({predictor.detector}); if the image is a face crop '
                      'already, pass --no_detect.')
  return [{'face': index, 'box': list(p.box) if p.box else None, 'emotion': p.emotion,
           'confidence': round(p.confidence, 6),
           'probabilities': {k: round(v, 6) for k, v in p.probabilities.items()}}
          for index, p in enumerate(found)]


def run(files: list[Any], predictor: Any, as_json: bool, detect: bool | None,
        csv_path: str | None = None) -> int:
  """Classifies each file on its own so one bad file does not stop the rest; returns #failures."""
  from fer_jax import video
  failures, table = 0, []
  if not as_json:
    print(f'{"file":32s} {"face":>5s} {"box (x, y, w, h)":>20s} {"emotion":9s} {"conf":>5s}  '
          + ' '.join(f'{n[:7]:>7s}' for n in predictor.labels))
  for path in files:
    is_video = isinstance(path, int) or str(path).lower().endswith(video.VIDEO_EXTENSIONS)
    name = f'camera {path}' if isinstance(path, int) else path
    try:
      rows = (video.predict_video(predictor, path, FLAGS.every, FLAGS.smooth, FLAGS.annotate)
              if is_video else _photo_rows(predictor, path, detect))
      count = 0
      for row in rows:
        count += 1
        row = {'file': name, **row}
        table.append(row)
        if as_json:
          print(json.dumps(row), flush=is_video)
        else:
          where = ', '.join(map(str, row['box'])) if row['box'] else 'whole image'
          face = f't{row["track"]}@{row["frame"]}' if is_video else str(row['face'])
          print(f'{str(name):32s} {face:>5s} {where:>20s} {row["emotion"]:9s} '
                f'{row["confidence"]:5.3f}  '
                + ' '.join(f'{p:7.3f}' for p in row['probabilities'].values()), flush=is_video)
      if is_video and not count:
        raise FerJaxError(f'no face found in any sampled frame ({predictor.detector}).')
    except FerJaxError as e:
      failures += 1
      print(f'error: {e}' if str(name) in str(e) else f'error: {name}: {e}', file=sys.stderr)
  if csv_path:
    _write_csv(csv_path, table, predictor.labels)
    print(f'wrote {len(table)} rows to {csv_path}', file=sys.stderr)
  if FLAGS.annotate and any(isinstance(p, int) or str(p).lower().endswith(video.VIDEO_EXTENSIONS)
                            for p in files):
    print(f'wrote the annotated video to {FLAGS.annotate}', file=sys.stderr)
  return failures


def _write_csv(path: str, rows: list[dict], labels: list[str]) -> None:
  import csv
  columns = ['file', 'face', 'frame', 'time_s', 'track', 'x', 'y', 'w', 'h', 'emotion',
             'confidence'] + labels
  with open(path + '.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, columns, extrasaction='ignore')
    writer.writeheader()
    for row in rows:
      box = row['box'] or [None] * 4
      writer.writerow({**row, **dict(zip('xywh', box)), **row['probabilities']})
  os.replace(path + '.tmp', path)


def main(argv: list[str]) -> None:
  files = expand_inputs(argv[1:]) + ([FLAGS.camera] if FLAGS.camera is not None else [])
  if not files:
    raise app.UsageError('name at least one image or video file or folder, or --camera.')
  if bool(FLAGS.workdir) == FLAGS.pretrained:
    raise app.UsageError('give either --workdir (a training workdir) or --pretrained.')
  from fer_jax.predictor import Predictor
  options = dict(tta=FLAGS.tta, detector=FLAGS.detector, align=not FLAGS.no_align)
  predictor = (Predictor.pretrained(**options) if FLAGS.pretrained else
               Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint, **options))
  if run(files, predictor, FLAGS.json, False if FLAGS.no_detect else None, FLAGS.csv):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
