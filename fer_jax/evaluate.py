"""Scores a trained model on a FER2013 CSV or an image-folder tree, with optional test-time augmentation.

    python -m fer_jax.evaluate --workdir runs/enhanced --data fer2013.csv --split test --tta=flip,ten_crop

Writes `eval_<split>.json` (accuracy, per-class precision / recall / F1, macro-F1, confusion matrix
for every TTA variant) and `confusion_<split>.png` into the workdir, and prints the same as text.
"""
import json
import os
import sys
from typing import Callable

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import FerJaxError, parallel
from fer_jax.checkpoint import BEST
from fer_jax.data.csv import read_fer2013_csv
from fer_jax.data.fer2013 import SPLIT_USAGE, describe_splits
from fer_jax.data.images import read_image_folder
from fer_jax.predict import Predictor


def load_eval_data(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A split of a FER2013 CSV (plain or gz; any subset of usages) or of an image-folder tree."""
  if split not in SPLIT_USAGE:
    raise FerJaxError(f'--split={split!r} is unknown; use one of {", ".join(SPLIT_USAGE)}.')
  if os.path.isdir(path):
    return read_image_folder(path, split)
  by_usage = read_fer2013_csv(path)
  usage = SPLIT_USAGE[split]
  if usage not in by_usage:
    raise FerJaxError(f'{path} has no {usage} rows, so there is no {split!r} split; it holds '
                      f'{describe_splits(by_usage)}; pick one of those with --split.')
  return by_usage[usage]


def ten_crops(faces: np.ndarray, crop: int = 44) -> list[np.ndarray]:
  """Four corners and the centre, each resized back to 48x48, and their mirror images."""
  size = faces.shape[1]
  offsets = [(0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop),
             ((size - crop) // 2, (size - crop) // 2)]
  crops = []
  for y, x in offsets:
    patch = jnp.asarray(faces[:, y:y + crop, x:x + crop, :], jnp.float32)
    resized = jax.image.resize(patch, (len(faces), size, size, faces.shape[-1]), 'bilinear')
    crops.append(np.asarray(jnp.clip(jnp.round(resized), 0, 255), np.uint8))
  return crops + [c[:, :, ::-1] for c in crops]


TTA_VARIANTS: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
    'none': lambda faces: [faces],
    'flip': lambda faces: [faces, faces[:, :, ::-1]],
    'ten_crop': ten_crops,
}


def classification_report(labels: np.ndarray, predicted: np.ndarray,
                          class_names: list[str]) -> dict:
  """Accuracy, per-class precision / recall / F1 and support, macro-F1, confusion matrix."""
  num = len(class_names)
  matrix = np.zeros((num, num), np.int64)
  np.add.at(matrix, (labels, predicted), 1)
  per_class = {}
  for i, name in enumerate(class_names):
    tp = matrix[i, i]
    precision = tp / matrix[:, i].sum() if matrix[:, i].sum() else 0.0
    recall = tp / matrix[i].sum() if matrix[i].sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_class[name] = {'precision': float(precision), 'recall': float(recall), 'f1': float(f1),
                       'support': int(matrix[i].sum())}
  return {'accuracy': float(np.trace(matrix) / max(matrix.sum(), 1)), 'count': int(matrix.sum()),
          'correct': int(np.trace(matrix)),
          'macro_f1': float(np.mean([c['f1'] for c in per_class.values()])),
          'per_class': per_class, 'confusion_matrix': matrix.tolist()}


def evaluate(predictor: Predictor, faces: np.ndarray, labels: np.ndarray,
             tta: list[str]) -> dict[str, dict]:
  """One report per TTA variant; a variant averages the probabilities of its views."""
  reports = {}
  for variant in tta:
    if variant not in TTA_VARIANTS:
      raise FerJaxError(f'--tta variant {variant!r} is unknown; use any of {", ".join(TTA_VARIANTS)}.')
    views = TTA_VARIANTS[variant](faces)
    probabilities = np.mean([predictor.probabilities(view) for view in views], axis=0)
    reports[variant] = classification_report(labels, probabilities.argmax(-1), predictor.labels)
  return reports


def format_report(report: dict, class_names: list[str]) -> str:
  lines = [f"accuracy {report['accuracy']:.4f} ({report['correct']}/{report['count']})  "
           f"macro-F1 {report['macro_f1']:.4f}",
           f'{"class":10s} {"precision":>9s} {"recall":>7s} {"f1":>6s} {"support":>7s}']
  for name, c in report['per_class'].items():
    lines.append(f"{name:10s} {c['precision']:9.3f} {c['recall']:7.3f} {c['f1']:6.3f} {c['support']:7d}")
  lines.append('confusion matrix (rows true, columns predicted): ' + ' '.join(n[:3] for n in class_names))
  lines += [f'{name[:8]:>8s} ' + ' '.join(f'{v:5d}' for v in row)
            for name, row in zip(class_names, report['confusion_matrix'])]
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a program so importing stays side-effect free."""
  flags.DEFINE_string('workdir', None, 'Training workdir holding checkpoints/; reports go here too.')
  flags.DEFINE_bool('pretrained', False, 'Score the weights that ship with fer_jax; reports go to '
                    '--workdir when given, else ./pretrained_eval.')
  flags.DEFINE_string('checkpoint', BEST, '"best", "latest" or a step number.')
  flags.DEFINE_string('data', None, 'FER2013 CSV (.csv / .csv.gz) or image-folder root.')
  flags.DEFINE_string('split', 'test', 'train (Training), validation (PublicTest) or test (PrivateTest).')
  flags.DEFINE_list('tta', ['none', 'flip'], 'Test-time augmentation variants: none, flip, ten_crop.')
  flags.DEFINE_integer('recalibrate_bn', 0, 'Re-measure BatchNorm statistics on this many clean '
                       'Training faces first (fer_jax.batchnorm); 0 = use the checkpoint\'s.')
  flags.DEFINE_string('recalibration_data', None, 'Where those Training faces come from; '
                      'default --data.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not (FLAGS.workdir or FLAGS.pretrained) or not FLAGS.data:
    raise app.UsageError('--data and one of --workdir or --pretrained are required.')
  parallel.configure_cpu_backend()  # before JAX starts (README, "Speed")
  out_dir = FLAGS.workdir or 'pretrained_eval'
  os.makedirs(out_dir, exist_ok=True)
  from fer_jax import plots
  try:
    faces, labels = load_eval_data(FLAGS.data, FLAGS.split)
    predictor = (Predictor.pretrained() if FLAGS.pretrained else
                 Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint))
    if FLAGS.recalibrate_bn:
      train_faces, _ = load_eval_data(FLAGS.recalibration_data or FLAGS.data, 'train')
      predictor.recalibrate_batch_stats(train_faces[:FLAGS.recalibrate_bn])
    reports = evaluate(predictor, faces, labels, FLAGS.tta)
  except FerJaxError as e:
    sys.exit(f'error: {e}')
  for variant, report in reports.items():
    print(f'== {FLAGS.split}, TTA {variant} ==\n{format_report(report, predictor.labels)}\n')
  path = os.path.join(out_dir, f'eval_{FLAGS.split}.json')
  with open(path, 'w') as f:
    json.dump({'data': os.path.abspath(FLAGS.data), 'split': FLAGS.split,
               'checkpoint': 'pretrained' if FLAGS.pretrained else FLAGS.checkpoint,
               'recalibrate_bn': FLAGS.recalibrate_bn,
               'reports': reports}, f, indent=2)
  first = next(iter(reports))
  png = os.path.join(out_dir, f'confusion_{FLAGS.split}.png')
  plots.confusion_matrix(np.array(reports[first]['confusion_matrix']), predictor.labels, png,
                         f'{FLAGS.split}, TTA {first}: accuracy {reports[first]["accuracy"]:.3f}')
  print(f'wrote {path} and {png}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
