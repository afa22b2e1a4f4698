"""Scoring a model on labelled faces: the classification report (accuracy, per-class precision /
recall / F1, macro-F1, confusion matrix) for each test-time augmentation variant, and calibration:
expected calibration error and the temperature that minimises the negative log-likelihood.
"""
import os

from absl import logging
import numpy as np

from fer_jax import EMOTIONS, FerJaxError, faces, metrics, plural
from fer_jax.data.csv import read_fer2013_csv
from fer_jax.data import SPLIT_USAGE, describe_splits
from fer_jax.data.images import read_image_folder
from fer_jax.predictor import TTA_VARIANTS, Predictor, calibrated


def _check_exists(path: str) -> None:
  if not os.path.exists(path):
    raise FerJaxError(f'--data={path} does not exist; pass a FER2013 CSV (.csv / .csv.gz) or an '
                      'image-folder root.')


def available_splits(path: str) -> list[str]:
  """The splits a FER2013 CSV (by its Usage column) or an image-folder tree (by folder) holds."""
  _check_exists(path)
  if os.path.isdir(path):
    return [s for s in SPLIT_USAGE if os.path.isdir(os.path.join(path, s))]
  if path.endswith(('.npz', '.npz.xz')):
    from fer_jax.data import load_arrays
    present = []
    for split in SPLIT_USAGE:
      try:
        load_arrays(path, split)
        present.append(split)
      except FerJaxError as e:
        if 'has no' not in str(e):
          raise
    return present
  return [s for s, usage in SPLIT_USAGE.items() if usage in read_fer2013_csv(path)]


def default_split(path: str) -> str:
  """test (PrivateTest) when the data has it, else validation (PublicTest), else what there is."""
  present = available_splits(path)
  for split in ('test', 'validation', 'train'):
    if split in present:
      return split
  raise FerJaxError(f'{path} holds none of the splits {", ".join(SPLIT_USAGE)}; a CSV needs '
                    'Usage values Training / PublicTest / PrivateTest, a folder <split>/<class>/.')


def load_eval_data(path: str, split: str,
                   class_names: list[str] | tuple[str, ...] = EMOTIONS) -> tuple[np.ndarray, np.ndarray]:
  """A split of a FER2013 CSV (plain or gz; any subset of usages), of the arrays file (.npz[.xz])
  or of an image-folder tree, with labels as indices into `class_names` (a model's labels):
  folders are matched by name."""
  if split not in SPLIT_USAGE:
    raise FerJaxError(f'--split={split!r} is unknown; use one of {", ".join(SPLIT_USAGE)}.')
  _check_exists(path)
  if os.path.isdir(path):  # faces found in photos as predict finds them; small images are crops
    faces_found, labels, classes = read_image_folder(path, split, faces.dataset_face)
  elif path.endswith(('.npz', '.npz.xz')):  # FER2013 as arrays (x, y, usage): no CSV parsing
    from fer_jax.data import load_arrays
    (faces_found, labels), classes = load_arrays(path, split), list(EMOTIONS)
  else:
    by_usage = read_fer2013_csv(path)
    usage = SPLIT_USAGE[split]
    if usage not in by_usage:
      raise FerJaxError(f'{path} has no {usage} rows, so there is no {split!r} split; it holds '
                        f'{describe_splits(by_usage)}; pick one of those with --split.')
    (faces_found, labels), classes = by_usage[usage], list(EMOTIONS)
  unknown = [c for c in classes if c not in class_names]
  if unknown:
    raise FerJaxError(f'{path} ({split}) has class {unknown[0]!r}, which the model does not know (its '
                      f'classes: {", ".join(class_names)}); score a model trained on these classes, '
                      'or move that folder out.')
  return faces_found, np.asarray([list(class_names).index(c) for c in classes],
                                 np.int32)[labels] if len(labels) else labels


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
          # over the classes the data holds or the model predicted (a 3-class set scored by a
          # 7-class model is not averaged with 4 empty classes)
          'macro_f1': float(np.mean([c['f1'] for i, c in enumerate(per_class.values())
                                     if matrix[i].sum() or matrix[:, i].sum()])),
          'mean_recall': float(np.mean([c['recall'] for c in per_class.values() if c['support']])),
          'per_class': per_class, 'confusion_matrix': matrix.tolist()}


def check_tta(tta: list[str]) -> None:
  for variant in tta:
    if variant not in TTA_VARIANTS:
      raise FerJaxError(f'--tta variant {variant!r} is unknown; use any of {", ".join(TTA_VARIANTS)}.')


def view_logits(predictor: Predictor, faces: np.ndarray, variant: str,
                progress: metrics.ProgressBar | None = None) -> np.ndarray:
  """(views, N, classes) logits of a TTA variant's views of the faces."""
  out = []
  for view in TTA_VARIANTS[variant](faces):
    chunks = []
    for start in range(0, len(view), predictor.batch_size):
      chunks.append(predictor.logits(view[start:start + predictor.batch_size]))
      if progress is not None:
        progress.update(progress.done + len(chunks[-1]), variant)
    out.append(np.concatenate(chunks))
  return np.stack(out)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = 15) -> tuple[float, list[dict]]:
  """ECE over equal-width confidence bins, and the bins (count, confidence, accuracy) it came from."""
  confidence, predicted = probabilities.max(-1), probabilities.argmax(-1)
  correct = (predicted == labels).astype(np.float64)
  edges = np.linspace(0, 1, bins + 1)
  which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
  table, ece = [], 0.0
  for b in range(bins):
    chosen = which == b
    if chosen.any():
      table.append({'low': float(edges[b]), 'high': float(edges[b + 1]), 'count': int(chosen.sum()),
                    'confidence': float(confidence[chosen].mean()),
                    'accuracy': float(correct[chosen].mean())})
      ece += chosen.mean() * abs(confidence[chosen].mean() - correct[chosen].mean())
  return float(ece), table


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """The temperature in [0.25, 5] that minimises the negative log-likelihood of the labels under
  calibrated(logits, T): a 1-D search, coarse then fine (temperature scaling, Guo et al. 2017)."""
  def nll(temperature: float) -> float:
    return -np.log(calibrated(logits, temperature)[np.arange(len(labels)), labels] + 1e-12).mean()
  grid = np.exp(np.linspace(np.log(0.25), np.log(5.0), 61))
  best = grid[int(np.argmin([nll(t) for t in grid]))]
  fine = np.linspace(best / 1.06, best * 1.06, 41)
  return float(fine[int(np.argmin([nll(t) for t in fine]))])


def report_from_logits(logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                       temperature: float = 1.0) -> dict:
  """The one report of every evaluation, the training loop's and the CLI's: from (views, N,
  classes) logits, the classification report of the views' mean calibrated probabilities, its
  loss (the mean negative log-likelihood of the labels at temperature 1: for one view, the
  cross-entropy training minimises) and the expected calibration error at 1 and at `temperature`."""
  probabilities = calibrated(logits, temperature)
  plain = calibrated(logits, 1.0)
  report = classification_report(labels, probabilities.argmax(-1), class_names)
  report['loss'] = float(-np.log(plain[np.arange(len(labels)), labels] + 1e-12).mean())
  report['ece'], report['reliability'] = expected_calibration_error(plain, labels)
  report['temperature'] = temperature
  report['ece_calibrated'], report['reliability_calibrated'] = expected_calibration_error(
      probabilities, labels)
  return report


def split_reports(logits_fn, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                  tta: list[str], batch_size: int) -> dict[str, dict]:
  """Reports per TTA variant, logits_fn applied to fixed-size batches (the last padded, so a
  compiled logits_fn never recompiles): how the training loop scores its evaluations."""
  reports = {}
  for variant in tta:
    per_view = []
    for view in TTA_VARIANTS[variant](images):
      chunks = []
      for start in range(0, len(view), batch_size):
        chunk = view[start:start + batch_size]
        padded = np.zeros((batch_size, *chunk.shape[1:]), chunk.dtype)
        padded[:len(chunk)] = chunk
        chunks.append(np.asarray(logits_fn(padded))[:len(chunk)])
      per_view.append(np.concatenate(chunks))
    reports[variant] = report_from_logits(np.stack(per_view), labels, class_names)
  return reports


def evaluate(predictor: Predictor, faces: np.ndarray, labels: np.ndarray,
             tta: list[str], progress: bool = False) -> dict[str, dict]:
  """One report per TTA variant (a variant averages the calibrated probabilities of its views).
  With `progress`, a bar (a log line every 10 % off a terminal) counts the views scored."""
  check_tta(tta)
  views_per_variant = {'none': 1, 'flip': 2, 'ten_crop': 10}
  per_face = sum(views_per_variant[v] for v in tta)  # the bar counts views, not faces
  bar = metrics.ProgressBar(len(faces) * per_face,
                            f'views scored ({plural(len(faces), "face")} x {per_face})',
                            enabled=progress)
  reports = {variant: report_from_logits(view_logits(predictor, faces, variant, bar), labels,
                                         predictor.labels, predictor.temperature_for(variant))
             for variant in tta}
  bar.close()
  return reports


def format_report(report: dict, class_names: list[str]) -> str:
  lines = [f"accuracy {report['accuracy']:.4f} ({report['correct']}/{report['count']})  "
           f"macro-F1 {report['macro_f1']:.4f}  loss {report['loss']:.4f}  ECE {report['ece']:.4f} "
           f"(temperature {report['temperature']:.3f}: {report['ece_calibrated']:.4f})",
           f'{"class":10s} {"precision":>9s} {"recall":>7s} {"f1":>6s} {"support":>7s}']
  for name, c in report['per_class'].items():
    lines.append(f"{name:10s} {c['precision']:9.3f} {c['recall']:7.3f} {c['f1']:6.3f} {c['support']:7d}")
  lines.append('confusion matrix (rows true, columns predicted): ' + ' '.join(n[:3] for n in class_names))
  lines += [f'{name[:8]:>8s} ' + ' '.join(f'{v:5d}' for v in row)
            for name, row in zip(class_names, report['confusion_matrix'])]
  return '\n'.join(lines)


def load_named_evals(named_paths: list[tuple[str, str]],
                     classes: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Each (name, path)'s default split (test, else validation) as (faces, labels indexed into
  `classes`): the datasets of config.evals, scored every epoch under their names."""
  extra = {}
  for name, path in named_paths:
    try:
      split = default_split(path)
      extra[name] = load_eval_data(path, split, list(classes))
    except FerJaxError as e:
      raise FerJaxError(f'config.evals entry {name}={path}: {e}') from None
    logging.info('evaluation %s: %d faces of %s (%s)', name, len(extra[name][1]), path, split)
  return extra
