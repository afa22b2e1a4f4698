"""Which view of a detected face to classify: test-time augmentation and crop framing on photo-like
faces, with the face detector in the loop.

    python experiments/photo_tta.py --data ../shared/data/fer2013/fer2013.csv.gz --faces 600

Photos: `--faces` PublicTest faces (drawn with `--seed`), each enlarged 4-8x (Lanczos) and pasted
at a random place in a larger frame (the face 40-70 % of the frame's shorter side, square or
portrait), on one of eight backgrounds: flat grey, the face's own enlargement blurred (a head-toned
surround), three grey textures and three colour photos from scikit-image; each frame goes through a
JPEG (quality 90), as a photo does. Faces are found as `predict` finds them in photos
(fer_jax.data.images.load_image, then fer_jax.faces.detect_faces, BlazeFace), once per photo;
every framing and TTA variant reuses those detections. A face counts as found when a detected box
has its centre inside the pasted face.

Framing: (box side / crop side, box centre height / crop side) of fer_jax.faces.crop_face, the
shipped `faces.FRAMING['blazeface']` and looser / tighter / higher / lower ones. Each framing's crop
is scored with TTA none, flip and ten crops (fer_jax.predictor.TTA_VARIANTS, shipped weights and
temperature). Accuracy is over the found faces (the faces `predict` would classify); the same faces
given directly as 48x48 crops are the reference row. Only PublicTest is read. 12-18 min on a 2-core
CPU shared with other jobs (about 6 min of CPU time); results in experiments/photo_tta.md.
"""
import io
import time
from typing import Any

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, 'FER2013 CSV with PublicTest rows.', required=True)
flags.DEFINE_integer('faces', 600, 'PublicTest faces to place in photos.')
flags.DEFINE_integer('seed', 0, 'Seed of the face subset and of every photo\'s layout.')

BACKGROUNDS = ('grey', 'own blur', 'brick', 'grass', 'gravel', 'coffee', 'rocket', 'hubble')
# (box side / crop side, box centre height / crop side); the first is the shipped framing.
SHARES = (0.854, 0.95, 0.78, 0.71)
CENTRES = (0.589, 0.55, 0.63)


def _background(kind: str, face: np.ndarray, height: int, width: int,
                rng: np.random.Generator) -> np.ndarray:
  """An RGB uint8 (height, width, 3) background of the given kind."""
  from PIL import Image, ImageFilter
  from skimage import data
  if kind == 'grey':
    return np.full((height, width, 3), int(rng.integers(60, 200)), np.uint8)
  if kind == 'own blur':
    image = Image.fromarray(face).resize((width, height), Image.Resampling.BILINEAR)
    blurred = image.filter(ImageFilter.GaussianBlur(max(height, width) / 12))
    return np.repeat(np.asarray(blurred)[..., None], 3, -1)
  source = {'brick': data.brick, 'grass': data.grass, 'gravel': data.gravel, 'coffee': data.coffee,
            'rocket': data.rocket, 'hubble': data.hubble_deep_field}[kind]()
  if source.ndim == 2:
    source = np.repeat(source[..., None], 3, -1)
  image = Image.fromarray(source).resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(image.convert('RGB'))


def make_photo(face: np.ndarray, rng: np.random.Generator
               ) -> tuple[Any, tuple[int, int, int], str]:
  """(the photo as a PIL JPEG image, where the face is (x, y, side), background kind)."""
  from PIL import Image
  side = 48 * int(rng.integers(4, 9))
  short = int(round(side / rng.uniform(0.4, 0.7)))
  height, width = int(round(short * rng.choice([1.0, 1.25, 1.33]))), short
  kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
  frame = np.array(_background(kind, face, height, width, rng))
  x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
  big = np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.LANCZOS))
  frame[y:y + side, x:x + side] = big[..., None]
  encoded = io.BytesIO()
  Image.fromarray(frame).save(encoded, 'JPEG', quality=90)
  return Image.open(io.BytesIO(encoded.getvalue())), (x, y, side), kind


def _paired(correct: np.ndarray, baseline: np.ndarray) -> str:
  """"+gained / -lost, p" of one variant against a baseline on the same faces (McNemar's exact
  test: a binomial test on the faces where exactly one is right)."""
  from scipy import stats
  gained, lost = int((correct & ~baseline).sum()), int((~correct & baseline).sum())
  p = stats.binomtest(gained, gained + lost).pvalue if gained + lost else 1.0
  return f'+{gained} / -{lost}, p {p:.2f}'


def main(argv: list[str]) -> None:
  del argv
  from fer_jax import cli
  cli.configure_cpu_backend()
  from fer_jax import evaluation, faces as fer_faces
  from fer_jax.data.csv import read_fer2013_csv
  from fer_jax.data.images import load_image
  from fer_jax.predictor import TTA_VARIANTS, Predictor

  all_faces, all_labels = read_fer2013_csv(FLAGS.data)['PublicTest']
  rng = np.random.default_rng(FLAGS.seed)
  chosen = np.sort(rng.choice(len(all_labels), FLAGS.faces, replace=False))
  faces, labels = all_faces[chosen, ..., 0], all_labels[chosen]
  predictor = Predictor.pretrained()

  # Detection, once per photo.
  start = time.perf_counter()
  greys, found, kinds, extra = [], [], [], 0
  for face in faces:
    photo, (x, y, side), kind = make_photo(face, rng)
    rgb, grey, _ = load_image(photo)
    detections = fer_faces.detect_faces(rgb)
    hits = [d for d in detections
            if x <= d.box[0] + d.box[2] / 2 <= x + side and y <= d.box[1] + d.box[3] / 2 <= y + side]
    extra += len(detections) - len(hits)
    greys.append(grey if hits else None)
    found.append(hits[0] if hits else None)
    kinds.append(kind)
  detect_s = time.perf_counter() - start
  ok = np.array([f is not None for f in found])
  kinds = np.array(kinds)
  print(f'{FLAGS.faces} PublicTest faces (seed {FLAGS.seed}) in photos; BlazeFace found '
        f'{ok.sum()} ({100 * ok.mean():.1f} %) in {detect_s:.0f} s')
  for kind in BACKGROUNDS:
    where = kinds == kind
    print(f'  {kind:9s} found {ok[where].sum():4d} / {where.sum():4d}')

  hit_labels = labels[ok]

  def scores(crops: np.ndarray) -> dict[str, np.ndarray]:
    """TTA variant -> correct (bool per face). The views are scored once: none's one view is
    flip's first, then flip's mirror, then the ten crops."""
    faces4 = crops[..., None]
    views = TTA_VARIANTS['flip'](faces4) + TTA_VARIANTS['ten_crop'](faces4)
    logits = predictor.logits(np.concatenate(views)).reshape(len(views), len(crops), -1)
    out = {}
    for variant, (first, last) in {'none': (0, 1), 'flip': (0, 2), 'ten_crop': (2, 12)}.items():
      probabilities = evaluation.calibrated(logits[first:last], predictor.temperature)
      out[variant] = probabilities.argmax(-1) == hit_labels
    return out

  table = {('as given (48x48 crop, no detection)', '-'): scores(faces[ok])}
  for share in SHARES:
    for centre in CENTRES:
      if share != SHARES[0] and centre != CENTRES[0]:
        continue
      crops = np.stack([fer_faces.crop_face(grey, face, True, (share, centre))
                        for grey, face in zip(greys, found) if face is not None])
      name = f'{share:.3f}, {centre:.3f}' + (' (shipped)' if (share, centre) == (SHARES[0], CENTRES[0]) else '')
      table[('detected', name)] = scores(crops)

  count = int(ok.sum())
  default = table[('detected', f'{SHARES[0]:.3f}, {CENTRES[0]:.3f} (shipped)')]['ten_crop']
  print(f'\nAccuracy on the {count} found faces (PublicTest labels), shipped weights, T = '
        f'{predictor.temperature:.2f}; in brackets, against ten_crop at the shipped framing: faces '
        f'right where it is wrong / wrong where it is right, and the two-sided exact McNemar p:\n')
  print('| faces | framing (box share, centre height) | ' + ' | '.join(TTA_VARIANTS) + ' |')
  print('|---|---|' + '---:|' * len(TTA_VARIANTS))
  for (source, name), correct in table.items():
    print(f'| {source} | {name} | ' + ' | '.join(
        f'{100 * c.mean():.2f} % ({_paired(c, default)})' for c in correct.values()) + ' |')
  print(f'\nDetections outside the pasted face: {extra}; {time.perf_counter() - start:.0f} s in all.')

if __name__ == '__main__':
  app.run(main)
