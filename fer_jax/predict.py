"""The emotion of every face in photos, face crops and videos: one row per face (per sampled frame),
with its box, the emotion, a calibrated confidence and every class's probability.

    python -m fer_jax.predict --pretrained --sample      # the sample photo and clip (fer_jax.samples)
    python -m fer_jax.predict --pretrained group.jpg face.png photos/ [--json] [--csv out.csv]
    python -m fer_jax.predict --pretrained clip.mp4 --every 5 --annotate clip_annotated.mp4
    python -m fer_jax.predict --pretrained --tta none --camera 0   # live, shown where a display exists
    python -m fer_jax.predict --workdir runs/quick --tta flip --detector haar photo.jpg

Images up to 64 px on their longer side are taken as face crops; larger ones are searched for
faces, and one up to 160 px with no face found is taken as a crop too (--no_detect takes every
image as a crop). Folders are searched for images and videos (recursively, hidden entries
skipped; a file of another kind gets one `skipped` line). A file that cannot be read, a photo with
no face, or a video that ends before the frames its container states gets one `error:` line on
stderr and the others are still classified. Every output path (--csv, --annotate) is checked and
its folder made before any work. Exit status (fer_jax.cli): 0 when every file gave its faces, 1
otherwise, 2 for a wrong command line, 130 / 143 when interrupted.
In Python: `from fer_jax.predict import Predictor` (fer_jax/predictor.py).
"""
import json
import os
import sys
from typing import Any, Iterable

from absl import app, flags

from fer_jax import FerJaxError, cli, plural

_LIBRARY = ('Predictor', 'Prediction', 'load_and_predict')


def __getattr__(name: str) -> Any:
  """`from fer_jax.predict import Predictor` without importing JAX for `--help`."""
  if name in _LIBRARY:
    from fer_jax import predictor
    return getattr(predictor, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def expand_inputs(paths: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
  """(files, one line per skipped file, one error per folder with nothing to read): files as
  given; folders replaced by the images and videos inside them (fer_jax.data.images.walk_files:
  sorted, recursive, hidden entries skipped)."""
  from fer_jax.data.images import IMAGE_EXTENSIONS, is_image_file, skipped_line, walk_files
  from fer_jax.video import VIDEO_EXTENSIONS
  files, skipped, errors = [], [], []
  for path in paths:
    if not os.path.isdir(path):
      files.append(path)
      continue
    found = []
    for file in walk_files(path):
      if is_image_file(file) or file.lower().endswith(VIDEO_EXTENSIONS):
        found.append(file)
      else:
        skipped.append(skipped_line(file))
    if not found:
      errors.append(f'{path} holds no images or videos (hidden files are skipped; read are '
                    f'{" ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)}); pass another folder.')
    files += found
  return files, skipped, errors


def is_video(source: Any) -> bool:
  from fer_jax.video import VIDEO_EXTENSIONS
  return isinstance(source, int) or str(source).lower().endswith(VIDEO_EXTENSIONS)


def check_explain_names(inputs: list[Any], out_dir: str) -> None:
  """--explain names its figures by each photo's name (explain_figures.write_explanations): two
  photos of one name in different folders would overwrite each other, so they are refused first."""
  seen = {}
  for source in inputs:
    if isinstance(source, int) or is_video(source):
      continue  # videos are classified only
    stem = os.path.splitext(os.path.basename(source))[0]
    if stem in seen:
      raise FerJaxError(f'--explain: {seen[stem]} and {source} would both be drawn as '
                        f'{os.path.join(out_dir, stem)}_face<i>.png; explain them in separate runs '
                        'or rename one.')
    seen[stem] = source


def annotation_paths(inputs: list[Any], annotate: str | None) -> dict[Any, str]:
  """Where each input's annotated copy goes: with one input, `annotate` is the file; with several,
  a folder that gets `<input name>_annotated.<png|mp4>` per input. Checked (and folders made)
  before any work, so no result is lost to a bad path at the end."""
  from fer_jax.data.images import is_image_file
  if not annotate:
    return {}
  paths = {}
  if len(inputs) == 1 and not os.path.isdir(annotate):
    source = inputs[0]
    want = ('.mp4', '.avi') if is_video(source) else ('.png', '.jpg', '.jpeg', '.webp', '.bmp')
    if not annotate.lower().endswith(want):
      raise FerJaxError(f'--annotate={annotate}: name a {" / ".join(want)} file for '
                        f'{"a video" if is_video(source) else "a photo"}.')
    paths[source] = annotate
  elif is_image_file(annotate) or is_video(annotate) or os.path.isfile(annotate):
    raise FerJaxError(f'--annotate={annotate} names one file, but {len(inputs)} inputs were given; '
                      'pass a folder (e.g. --annotate=annotated/) to get one file per input.')
  for source in inputs[len(paths):]:
    stem = f'camera{source}' if isinstance(source, int) else os.path.splitext(
        os.path.basename(source))[0]
    path = os.path.join(annotate, f'{stem}_annotated{".mp4" if is_video(source) else ".png"}')
    clash = next((other for other, taken in paths.items() if taken == path), None)
    if clash is not None:
      raise FerJaxError(f'--annotate: {clash} and {source} would both be written to {path}; '
                        'annotate them in separate runs or rename one.')
    paths[source] = path
  files = {os.path.abspath(source) for source in inputs if not isinstance(source, int)}
  for path in paths.values():
    if os.path.abspath(path) in files:
      raise FerJaxError(f'--annotate: {path} is one of the inputs; name another file or folder, '
                        'so the original is kept.')
    cli.prepare_output(path, '--annotate')
  return paths


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
  flags.DEFINE_enum('tta', None, ['none', 'flip', 'ten_crop'], 'Test-time augmentation for every '
                    'face. Default: flip for faces found in photos and video frames, ten_crop for '
                    'face crops (docs/photos.md). ten_crop costs ~25 ms a face on a 2-core CPU, '
                    'flip ~6, none ~4.')
  flags.DEFINE_bool('sample', False, 'Add the sample photo and clip that ship with fer_jax '
                    '(fer_jax/samples/) to the inputs.')
  flags.DEFINE_integer('camera', None, 'Read this camera (OpenCV index, e.g. 0) instead of files: '
                       'its newest frame each time, shown with boxes, emotions and frames/s where '
                       'a display exists (q or Esc stops).')
  flags.DEFINE_integer('every', 1, 'Videos: classify every N-th frame.')
  flags.DEFINE_float('smooth', 0.5, 'Videos: weight of the newest frame in each face track\'s '
                     'running average of probabilities (1 = no smoothing).')
  flags.DEFINE_string('csv', None, 'Also write every row (photos and video frames) to this CSV.')
  flags.DEFINE_string('annotate', None, 'Write each input with boxes, emotions and confidences '
                      'drawn: with one input this file (.png / .jpg for a photo, .mp4 for a video), '
                      'with several a folder that gets <name>_annotated.png|.mp4 per input.')
  flags.DEFINE_string('explain', None, 'Write one PNG per face of every photo and crop into this '
                      'folder: the crop, its saliency map, the top-2 emotions and, for photos, the '
                      'map in the photo (fer_jax.explain; videos are classified only).')
  flags.DEFINE_enum('explain_method', 'grad_cam', ['grad_cam', 'integrated_gradients'],
                    'The map --explain draws (integrated gradients: 64 steps, black baseline).')


def face_rows(found: list[Any]) -> list[dict]:
  """predict --json's row of each of an image's faces (fer_jax.predictor.Prediction, largest
  first): its index, box (x, y, w, h) or None, emotion, confidence and probabilities, to 6 places.
  The server answers with the same rows."""
  return [{'face': index, 'box': list(p.box) if p.box else None, 'emotion': p.emotion,
           'confidence': round(p.confidence, 6),
           'probabilities': {k: round(v, 6) for k, v in p.probabilities.items()}}
          for index, p in enumerate(found)]


def _photo_rows(predictor: Any, path: str, detect: bool | None, annotate: str | None) -> list[dict]:
  found = predictor.predict_faces(path, detect)
  if not found:
    raise FerJaxError(f'no face found ({predictor.detector}); if the image is a face crop '
                      'already, pass --no_detect.')
  rows = face_rows(found)
  if annotate:
    _annotate_photo(path, rows, annotate)
  return rows


def _annotate_photo(path: str, rows: list[dict], out: str) -> None:
  """The photo as loaded (at most MAX_SIDE pixels a side) with its faces drawn, written to `out`."""
  import numpy as np
  from PIL import Image
  from fer_jax import faces
  from fer_jax.data.images import load_image
  rgb, _, scale = load_image(path)
  shown = [{**row, 'box': [int(round(v / scale)) for v in row['box']] if row['box'] else None}
           for row in rows]
  bgr = faces.draw_faces(np.ascontiguousarray(rgb[..., ::-1]), shown)
  Image.fromarray(bgr[..., ::-1]).save(out)


def run(files: list[Any], predictor: Any, as_json: bool, detect: bool | None,
        csv_path: str | None = None, annotations: dict[Any, str] | None = None) -> int:
  """Classifies each file on its own so one bad file does not stop the rest; returns #failures."""
  from fer_jax import video
  failures, table, header = 0, [], not as_json
  annotations = annotations or {}
  for path in files:
    name = f'camera {path}' if isinstance(path, int) else path
    frames = is_video(path)
    try:
      rows = (video.predict_video(predictor, path, FLAGS.every, FLAGS.smooth,
                                  annotations.get(path)) if frames
              else _photo_rows(predictor, path, detect, annotations.get(path)))
      count = 0
      for row in rows:
        count += 1
        row = {'file': name, **row}
        if csv_path:  # held only for the CSV, so a camera left running stays in constant memory
          table.append(row)
        if header:
          print(f'{"file":32s} {"face":>5s} {"box (x, y, w, h)":>20s} {"emotion":9s} '
                f'{"conf":>5s}  ' + ' '.join(f'{n[:7]:>7s}' for n in predictor.labels))
          header = False
        if as_json:
          print(json.dumps(row), flush=frames)
        else:
          where = ', '.join(map(str, row['box'])) if row['box'] else 'whole image'
          face = f't{row["track"]}@{row["frame"]}' if frames else str(row['face'])
          print(f'{str(name):32s} {face:>5s} {where:>20s} {row["emotion"]:9s} '
                f'{row["confidence"]:5.3f}  '
                + ' '.join(f'{p:7.3f}' for p in row['probabilities'].values()), flush=frames)
      if frames and not count:
        raise FerJaxError(f'no face found in any sampled frame ({predictor.detector}).')
      if FLAGS.explain and not frames:
        from fer_jax import explain_figures
        written = explain_figures.write_explanations(predictor, path, detect, FLAGS.explain,
                                                     FLAGS.explain_method)
        print(f'wrote {len(written)} explanation(s) to {FLAGS.explain}', file=sys.stderr)
      if path in annotations:
        print(f'wrote the annotated {"video" if frames else "photo"} to '
              f'{annotations[path]}', file=sys.stderr)
    except FerJaxError as e:
      failures += 1
      print(f'error: {e}' if str(name) in str(e) else f'error: {name}: {e}', file=sys.stderr)
  if csv_path:
    _write_csv(csv_path, table, predictor.labels)
    print(f'wrote {plural(len(table), "row")} to {csv_path}', file=sys.stderr)
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
  from fer_jax import samples
  inputs = (argv[1:] + (samples.paths() if FLAGS.sample else [])
            + ([FLAGS.camera] if FLAGS.camera is not None else []))
  if not inputs:
    raise app.UsageError('name at least one image or video file or folder, --sample or --camera.')
  if bool(FLAGS.workdir) == FLAGS.pretrained:
    raise app.UsageError('give either --workdir (a training workdir) or --pretrained.')
  files, skipped, empty_folders = expand_inputs(inputs)
  for line in skipped:
    print(line, file=sys.stderr)
  for line in empty_folders:
    print(f'error: {line}', file=sys.stderr)
  if not files:
    sys.exit(1)
  # Every output path is checked (its folder made) before any work.
  csv_path = cli.prepare_output(FLAGS.csv, '--csv') if FLAGS.csv else None
  annotations = annotation_paths(files, FLAGS.annotate)
  if FLAGS.explain:
    check_explain_names(files, FLAGS.explain)
    cli.prepare_folder(FLAGS.explain, '--explain')
  from fer_jax.predictor import Predictor
  options = dict(tta=FLAGS.tta, detector=FLAGS.detector, align=not FLAGS.no_align)
  predictor = (Predictor.pretrained(**options) if FLAGS.pretrained else
               Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint, **options))
  if run(files, predictor, FLAGS.json, False if FLAGS.no_detect else None, csv_path,
         annotations) or empty_folders:
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
