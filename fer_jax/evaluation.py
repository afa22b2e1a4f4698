"""Scoring a model on labelled faces: test-time augmentation variants and the classification report
(accuracy, per-class precision / recall / F1, macro-F1, confusion matrix) that `evaluate` prints.
"""
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import FerJaxError, metrics
from fer_jax.data.csv import read_fer2013_csv
from fer_jax.data import SPLIT_USAGE, describe_splits
from fer_jax.data.images import read_image_folder
from fer_jax.predictor import Predictor


def _check_exists(path: str) -> None:
  if not os.path.exists(path):
    raise FerJaxError(f'--data={path} does not exist; pass a FER2013 CSV (.csv / .csv.gz) or an '
                      'image-folder root.')


def available_splits(path: str) -> list[str]:
  """The splits a FER2013 CSV (by its Usage column) or an image-folder tree (by folder) holds."""
  _check_exists(path)
  if os.path.isdir(path):
    return [s for s in SPLIT_USAGE if os.path.isdir(os.path.join(path, s))]
  return [s for s, usage in SPLIT_USAGE.items() if usage in read_fer2013_csv(path)]


def default_split(path: str) -> str:
  """test (PrivateTest) when the data has it, else validation (PublicTest), else what there is."""
  present = available_splits(path)
  for split in ('test', 'validation', 'train'):
    if split in present:
      return split
  raise FerJaxError(f'{path} holds none of the splits {", ".join(SPLIT_USAGE)}; a CSV needs '
                    'Usage values Training / PublicTest / PrivateTest, a folder <split>/<class>/.')


def load_eval_data(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A split of a FER2013 CSV (plain or gz; any subset of usages) or of an image-folder tree."""
  if split not in SPLIT_USAGE:
    raise FerJaxError(f'--split={split!r} is unknown; use one of {", ".join(SPLIT_USAGE)}.')
  _check_exists(path)
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


def check_tta(tta: list[str]) -> None:
  for variant in tta:
    if variant not in TTA_VARIANTS:
      raise FerJaxError(f'--tta variant {variant!r} is unknown; use any of {", ".join(TTA_VARIANTS)}.')


def evaluate(predictor: Predictor, faces: np.ndarray, labels: np.ndarray,
             tta: list[str], progress: bool = False) -> dict[str, dict]:
  """One report per TTA variant; a variant averages the probabilities of its views. With
  `progress`, a bar (a log line every 10 % when not on a terminal) counts the faces scored."""
  check_tta(tta)
  views_per_variant = {'none': 1, 'flip': 2, 'ten_crop': 10}
  total = len(faces) * sum(views_per_variant[variant] for variant in tta)
  bar = metrics.ProgressBar(total, 'scoring faces', enabled=progress)
  done, reports = 0, {}
  for variant in tta:
    probabilities = 0.0
    views = TTA_VARIANTS[variant](faces)
    for view in views:
      chunks = []
      for start in range(0, len(view), predictor.batch_size):
        chunks.append(predictor.probabilities(view[start:start + predictor.batch_size]))
        done += len(chunks[-1])
        bar.update(done, variant)
      probabilities = probabilities + np.concatenate(chunks) / len(views)
    reports[variant] = classification_report(labels, np.asarray(probabilities).argmax(-1),
                                             predictor.labels)
  bar.close()
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
