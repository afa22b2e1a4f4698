"""Pictures a researcher looks at: learning curves, the confusion matrix, reliability diagrams
(matplotlib, Agg)."""
from typing import Any, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history: Sequence[dict[str, Any]], path: str) -> None:
  """Loss and accuracy per epoch, train and validation, side by side."""
  epochs = [h['epoch'] for h in history]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for axis, metric in zip(axes, ('loss', 'accuracy')):
    axis.plot(epochs, [h[f'train_{metric}'] for h in history], 'o-', label='train')
    axis.plot(epochs, [h[f'eval_{metric}'] for h in history], 's-',
              label=history[-1].get('eval_split', 'validation') if history else 'validation')
    axis.set_xlabel('epoch')
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str,
                     title: str = '') -> None:
  """Counts, with each row (true class) shaded by its recall, saved as a PNG."""
  fig = confusion_matrix_figure(matrix, class_names, title)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = ''):
  """The confusion matrix as a matplotlib figure (the caller closes it)."""
  recall = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  fig, axis = plt.subplots(figsize=(7, 6))
  image = axis.imshow(recall, cmap='Blues', vmin=0, vmax=1)
  for i in range(len(class_names)):
    for j in range(len(class_names)):
      axis.text(j, i, str(int(matrix[i, j])), ha='center', va='center',
                color='white' if recall[i, j] > 0.5 else 'black', fontsize=9)
  axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha='right')
  axis.set_yticks(range(len(class_names)), class_names)
  axis.set_xlabel('predicted')
  axis.set_ylabel('true')
  axis.set_title(title)
  fig.colorbar(image, ax=axis, label='fraction of the true class')
  fig.tight_layout()
  return fig


def reliability_diagram(tables: dict[str, tuple[float, list[dict]]], path: str, title: str = '') -> None:
  """Accuracy against confidence per bin, one line per {label: (ECE, bins)}; the diagonal is a
  perfectly calibrated model."""
  fig, axis = plt.subplots(figsize=(5.5, 5))
  axis.plot([0, 1], [0, 1], 'k--', lw=1, label='calibrated')
  for label, (ece, bins) in tables.items():
    axis.plot([b['confidence'] for b in bins], [b['accuracy'] for b in bins], 'o-',
              label=f'{label} (ECE {ece:.3f})')
  axis.set_xlabel('confidence (mean in each of 15 bins)')
  axis.set_ylabel('accuracy in the bin')
  axis.set_xlim(0, 1)
  axis.set_ylim(0, 1)
  axis.grid(alpha=0.3)
  axis.legend(loc='upper left')
  axis.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def study_curves(histories: dict[str, Sequence[dict[str, Any]]], path: str) -> None:
  """Validation accuracy per epoch, one line per trial."""
  fig, axis = plt.subplots(figsize=(9, 5))
  for name, history in histories.items():
    axis.plot([h['epoch'] for h in history], [h['eval_accuracy'] for h in history], 'o-',
              markersize=3, label=name)
  axis.set_xlabel('epoch')
  axis.set_ylabel('validation accuracy')
  axis.grid(alpha=0.3)
  if histories:
    axis.legend(fontsize=7, loc='best')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def metric_against(field: str, values: Sequence[Any], scores: Sequence[float], metric: str,
                   path: str) -> None:
  """One point per trial; numbers on a (log, when they span 10x) axis, anything else by category."""
  fig, axis = plt.subplots(figsize=(6, 4))
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  if numeric and values:
    axis.plot(values, scores, 'o')
    positive = [v for v in values if v > 0]
    if len(positive) == len(values) and max(positive) >= 10 * min(positive):
      axis.set_xscale('log')
  else:
    categories = list(dict.fromkeys(map(str, values)))
    axis.plot([categories.index(str(v)) for v in values], scores, 'o')
    axis.set_xticks(range(len(categories)), categories, rotation=20, ha='right')
  axis.set_xlabel(field)
  axis.set_ylabel(metric)
  axis.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
