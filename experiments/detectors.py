"""Face detectors side by side: faces found and missed, false alarms, time per photo; and what
detection + framing costs in accuracy against FER2013's own crops.

    python experiments/detectors.py --data $FER2013_PATH --faces 512

Photos: scikit-image's astronaut (one face) upright, turned by 15 / 30 / 45 degrees and shrunk to a
quarter, and a group of six FER2013 Training faces (enlarged to 96-160 px, two of them turned by
25 degrees) on a 640x480 grey canvas; scikit-image's coffee, cat and rocket photos hold no face.
Accuracy: the first N PublicTest faces, each enlarged to 144 px on a 288-px canvas (upright, and
turned by 20 degrees), found and cropped by each detector (eyes levelled or not), against the same
faces classified as given (TTA none).
"""
import time

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, 'FER2013 CSV with Training and PublicTest rows.', required=True)
flags.DEFINE_integer('faces', 512, 'PublicTest faces for the accuracy rows.')


def _rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.fromarray(rgb).rotate(degrees, resample=Image.Resampling.BILINEAR,
                                                 expand=True, fillcolor=(128, 128, 128)))


def photos(train_faces: np.ndarray) -> list[tuple[str, np.ndarray, int]]:
  """(name, RGB photo, faces in it)."""
  from PIL import Image
  from skimage import data
  astronaut = data.astronaut()
  small = np.asarray(Image.fromarray(astronaut).resize((128, 128), Image.Resampling.BOX))
  canvas = np.full((480, 640), 128, np.uint8)
  rng = np.random.default_rng(0)
  spots = [(20, 20), (20, 240), (20, 460), (260, 40), (260, 260), (260, 470)]
  for i, (y, x) in enumerate(spots):
    size = int(rng.integers(96, 161))
    face = Image.fromarray(train_faces[i]).resize((size, size), Image.Resampling.BILINEAR)
    if i in (1, 4):
      face = face.rotate(25, resample=Image.Resampling.BILINEAR, fillcolor=128)
    canvas[y:y + size, x:x + size] = np.asarray(face)
  padded_small = np.full((512, 512, 3), 128, np.uint8)
  padded_small[192:320, 192:320] = small
  return [('astronaut', astronaut, 1), ('astronaut +15 deg', _rotate(astronaut, 15), 1),
          ('astronaut +30 deg', _rotate(astronaut, 30), 1),
          ('astronaut -45 deg', _rotate(astronaut, -45), 1),
          ('astronaut at 1/4 size', padded_small, 1),
          ('six FER faces, two turned', np.repeat(canvas[..., None], 3, -1), 6),
          ('coffee', data.coffee(), 0), ('cat', data.chelsea(), 0), ('rocket', data.rocket(), 0)]


def main(argv: list[str]) -> None:
  del argv
  from PIL import Image
  from fer_jax import faces as fer_faces
  from fer_jax.data.csv import read_fer2013_csv
  from fer_jax.predictor import Predictor
  by_usage = read_fer2013_csv(FLAGS.data)
  train_faces = by_usage['Training'][0][..., 0]
  print('| photo | faces | ' + ' | '.join(f'{d} found / false' for d in fer_faces.DETECTORS) + ' |')
  print('|---|---:|' + '---:|' * len(fer_faces.DETECTORS))
  totals = {d: [0, 0, 0.0] for d in fer_faces.DETECTORS}
  for name, rgb, count in photos(train_faces):
    cells = []
    for detector in fer_faces.DETECTORS:
      fer_faces.detect_faces(rgb, detector)  # warm
      start = time.perf_counter()
      found = len(fer_faces.detect_faces(rgb, detector))
      totals[detector][2] += time.perf_counter() - start
      hits, false = min(found, count), max(found - count, 0)
      totals[detector][0] += hits
      totals[detector][1] += false
      cells.append(f'{hits} / {false}')
    print(f'| {name} | {count} | ' + ' | '.join(cells) + ' |')
  photos_count = len(photos(train_faces))
  print('| total (ms per photo) | 12 | ' + ' | '.join(
      f'{t[0]} / {t[1]} ({1000 * t[2] / photos_count:.0f} ms)' for t in totals.values()) + ' |')

  faces, labels = by_usage['PublicTest']
  faces, labels = faces[:FLAGS.faces, ..., 0], labels[:FLAGS.faces]
  predictor = Predictor.pretrained(tta='none')
  direct = (predictor.probabilities(faces).argmax(-1) == labels).mean()
  print(f'\n| {FLAGS.faces} PublicTest faces on a canvas | turned | found | accuracy (as given: '
        f'{100 * direct:.2f} %) |')
  print('|---|---:|---:|---:|')
  for degrees in (0, 20):
    for detector, align in (('blazeface', True), ('blazeface', False), ('haar', False)):
      predictor.detector, predictor.align = detector, align
      correct = found = 0
      for face, label in zip(faces, labels):
        canvas = np.full((288, 288), 128, np.uint8)
        canvas[72:216, 72:216] = np.asarray(Image.fromarray(face).resize((144, 144),
                                                                          Image.Resampling.BILINEAR))
        canvas = np.asarray(Image.fromarray(canvas).rotate(degrees, Image.Resampling.BILINEAR,
                                                           fillcolor=128))
        result = predictor.predict_faces(canvas, detect=True)
        if result:
          found += 1
          correct += result[0].emotion == predictor.labels[label]
      print(f'| {detector}{", eyes levelled" if align else ""} | {degrees} deg | {found} | '
            f'{100 * correct / len(faces):.2f} % |')


if __name__ == '__main__':
  app.run(main)
