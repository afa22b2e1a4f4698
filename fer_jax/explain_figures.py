"""Pictures of saliency maps (fer_jax.explain), matplotlib (Agg) as in fer_jax.plots: one PNG per
face for `predict --explain`, and the mean maps per class and per confusion for
`evaluate --explain`."""
import os
from typing import Any, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fer_jax import faces as faces_module  # noqa: E402

TITLES = {'grad_cam': 'Grad-CAM', 'integrated_gradients': 'integrated gradients'}


def shown(saliency: np.ndarray) -> tuple[np.ndarray, dict]:
  """(map, imshow options): a non-negative map (Grad-CAM) on 0..max in `jet`; a signed one
  (integrated gradients) centred on 0 in `bwr`, clipped at its 99th percentile of |value|."""
  if saliency.min() >= 0:
    return saliency, dict(cmap='jet', vmin=0, vmax=max(float(saliency.max()), 1e-12))
  limit = max(float(np.percentile(np.abs(saliency), 99)), 1e-12)
  return saliency, dict(cmap='bwr', vmin=-limit, vmax=limit)


def overlay(axis: Any, face: np.ndarray, saliency: np.ndarray, title: str = '') -> None:
  """The grey face with the map over it at half opacity."""
  axis.imshow(np.asarray(face).reshape(48, 48), cmap='gray', vmin=0, vmax=255)
  values, options = shown(saliency)
  axis.imshow(values, alpha=0.5, interpolation='bilinear', **options)
  axis.set_title(title, fontsize=9)
  axis.axis('off')


def crop_square(box: Sequence[int], detector: str) -> tuple[float, float, float]:
  """(x0, y0, side) of the square a face's 48x48 crop covers in the photo, from the detector's box
  (x, y, w, h) by the framing fer_jax.faces.crop_face uses (the turn that levels the eyes is not
  undone, so the map is placed as if the face were upright)."""
  share, centre_height = faces_module.FRAMING[detector]
  x, y, w, h = box
  side = max(w, h) / share
  return x + w / 2 - side / 2, y + h / 2 + (0.5 - centre_height) * side - side / 2, side


def into_photo(rgb: np.ndarray, boxes: Sequence[Sequence[int]], maps: Sequence[np.ndarray],
               detector: str, alpha: float = 0.5) -> np.ndarray:
  """A copy of an RGB photo with each face's map blended into the face's box (x, y, w, h, in the
  photo's pixels): the map is scaled to the crop's square and its part inside the box is drawn."""
  from PIL import Image
  out = rgb.astype(np.float32).copy()
  for box, saliency in zip(boxes, maps):
    x, y, w, h = (int(v) for v in box)
    x0, y0, side = crop_square(box, detector)
    size = max(int(round(side)), 2)
    values, options = shown(saliency)
    scaled = np.asarray(Image.fromarray(np.asarray(values, np.float32), mode='F').resize(
        (size, size), Image.BILINEAR))
    colours = plt.get_cmap(options['cmap'])(
        plt.Normalize(options['vmin'], options['vmax'])(scaled))[..., :3] * 255
    top, left = int(round(y - y0)), int(round(x - x0))
    # the box's rows and columns that lie both in the photo and in the crop's square
    rows = np.arange(max(y, 0, y - top), min(y + h, out.shape[0], y - top + size))
    cols = np.arange(max(x, 0, x - left), min(x + w, out.shape[1], x - left + size))
    if len(rows) and len(cols):
      patch = colours[np.ix_(rows - y + top, cols - x + left)]
      out[np.ix_(rows, cols)] = (1 - alpha) * out[np.ix_(rows, cols)] + alpha * patch
  return np.clip(out, 0, 255).astype(np.uint8)


def face_figure(crop: np.ndarray, saliency: np.ndarray, probabilities: dict[str, float],
                method: str, path: str, photo: np.ndarray | None = None) -> None:
  """One face: its crop, the map over it, the top-2 emotions, and the photo with the map in the
  face's box when there is one; saved as a PNG."""
  panels = 3 if photo is not None else 2
  fig, axes = plt.subplots(1, panels, figsize=(3 * panels, 3.4))
  top = sorted(probabilities.items(), key=lambda item: -item[1])[:2]
  axes[0].imshow(np.asarray(crop).reshape(48, 48), cmap='gray', vmin=0, vmax=255)
  axes[0].set_title('face: ' + ', '.join(f'{name} {p:.2f}' for name, p in top), fontsize=9)
  axes[0].axis('off')
  overlay(axes[1], crop, saliency, f'{TITLES[method]} for {top[0][0]}')
  if photo is not None:
    axes[2].imshow(photo)
    axes[2].set_title('in the photo', fontsize=9)
    axes[2].axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_explanations(predictor: Any, path: str, detect: bool | None, out_dir: str,
                       method: str = 'grad_cam') -> list[str]:
  """`<out_dir>/<image name>_face<i>.png` for every face in an image (predict --explain); the
  paths written."""
  from fer_jax.data.images import load_image
  crops, boxes = predictor.find_faces(path, detect)
  rgb, _, scale = load_image(path)
  if not len(crops):
    return []
  probabilities = predictor.probabilities(crops)
  maps = predictor.explain(crops, probabilities.argmax(-1), method)
  stem = os.path.splitext(os.path.basename(path))[0]
  written = []
  for index, (crop, box, saliency, p) in enumerate(zip(crops, boxes, maps, probabilities)):
    photo = None
    if box is not None:
      loaded = [int(round(v / scale)) for v in box]
      x, y, w, h = loaded  # shown: the face with a box's width and height of the photo around it
      photo = into_photo(rgb, [loaded], [saliency], predictor.detector)[
          max(y - h, 0):y + 2 * h, max(x - w, 0):x + 2 * w]
    written.append(os.path.join(out_dir, f'{stem}_face{index}.png'))
    face_figure(crop, saliency, dict(zip(predictor.labels, map(float, p))), method,
                written[-1], photo)
  return written


def mass(maps: np.ndarray) -> np.ndarray:
  """Each map's positive part scaled to sum 1: where a face's saliency lies, so that every face
  weighs the same in a mean."""
  positive = np.clip(maps, 0, None)
  return positive / np.maximum(positive.sum(axis=(1, 2), keepdims=True), 1e-12)


def class_means_figure(faces: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                       maps: np.ndarray, class_names: Sequence[str], path: str,
                       title: str = '', confusions: int = 7) -> list[tuple[int, int, int]]:
  """Top row: per true class, the mean face with the mean map (mass) of its faces. Bottom row:
  the same for the `confusions` most frequent (true, predicted) pairs with true != predicted.
  Saved as one PNG; returns those pairs as (true, predicted, count)."""
  faces = np.asarray(faces, np.float32).reshape(-1, 48, 48)
  maps = mass(maps)
  pairs = [(t, p, int(np.sum((labels == t) & (predicted == p))))
           for t in range(len(class_names)) for p in range(len(class_names)) if t != p]
  pairs = [pair for pair in sorted(pairs, key=lambda q: -q[2]) if pair[2]][:confusions]
  columns = max(len(class_names), len(pairs), 1)
  fig, axes = plt.subplots(2, columns, figsize=(1.9 * columns, 4.6))
  for axis in axes.ravel():
    axis.axis('off')
  for column, name in enumerate(class_names):
    chosen = labels == column
    if chosen.any():
      overlay(axes[0, column], faces[chosen].mean(0), maps[chosen].mean(0),
              f'{name} (n={int(chosen.sum())})')
  for column, (true, guess, count) in enumerate(pairs):
    chosen = (labels == true) & (predicted == guess)
    overlay(axes[1, column], faces[chosen].mean(0), maps[chosen].mean(0),
            f'{class_names[true]}→{class_names[guess]} (n={count})')
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return pairs


def explain_split(predictor: Any, faces: np.ndarray, labels: np.ndarray, count: int,
                  tta: str, path: str, title: str = '') -> list[tuple[int, int, int]]:
  """Grad-CAM of the first `count` faces for the class the predictor predicts (with `tta`),
  drawn by class_means_figure (evaluate --explain)."""
  faces, labels = faces[:count], np.asarray(labels[:count])
  predicted = predictor.probabilities(faces, tta).argmax(-1)
  maps = predictor.explain(faces, predicted, 'grad_cam')
  return class_means_figure(faces, labels, predicted, maps, predictor.labels, path, title)
