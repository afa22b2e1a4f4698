"""Faces in photos: detectors behind one interface, and crops framed the way FER2013 frames its faces,
for predict, video and image-folder datasets alike.

`blazeface` (the default) is MediaPipe's short-range BlazeFace, shipped in the package
(fer_jax/weights/blazeface_short_range.tflite, Apache-2.0, from mediapipe 0.10.14; the .onnx
beside it is the same network converted by experiments/blazeface_onnx.py) and run by
onnxruntime, a batch of squares a call: a box and six landmarks per face, eyes included, so the
crop can be turned until the eyes are level. Its input is 128x128, so a photo is searched whole
and in overlapping tiles, which finds faces down to ~1/8 of the photo's shorter side
(VideoSearch spreads that search over a video's frames). `haar` is OpenCV's bundled frontal-face
cascade: no landmarks, upright faces only.
"""
import dataclasses
import functools
import math
import os

import numpy as np

from fer_jax import FerJaxError

DETECTORS = ('blazeface', 'haar')
BLAZEFACE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights',
                              'blazeface_short_range.tflite')
BLAZEFACE_ONNX_PATH = BLAZEFACE_PATH[:-len('.tflite')] + '.onnx'  # what runs; made from the .tflite
# How each detector's box sits in a FER2013 crop, measured on 2,048 Training faces
# (experiments/face_crops.py): the box side as a share of the crop's side, and the box centre's
# height as a share of it. crop_face frames its crops to match.
FRAMING = {'blazeface': (0.854, 0.589), 'haar': (0.958, 0.500)}


# Images up to this many pixels on their longer side are face crops (FER2013's are 48); larger
# ones are photos, searched for faces. A searched image up to CROP_FALLBACK_SIDE in which no face
# is found is taken as a crop too: aligned face datasets (RAF-DB's are 100 px) frame the face so
# tightly that a detector, which expects some head around it, can miss it.
CROP_MAX_SIDE = 64
CROP_FALLBACK_SIDE = 160


@dataclasses.dataclass(frozen=True)
class Face:
  """A face in image pixels: the detector's box (x, y, w, h), which may reach past the image's
  edges and frames the crop, its score, eye centres when known, and the detector that found it
  (which sets how the crop is framed). Users see `clipped_box`."""
  box: tuple[int, int, int, int]
  score: float
  eyes: tuple[tuple[float, float], tuple[float, float]] | None = None
  detector: str = 'blazeface'


def clipped_box(box: tuple[int, int, int, int], width: int, height: int, scale: float = 1.0
                ) -> tuple[int, int, int, int]:
  """A detector's (x, y, w, h) box, in pixels of an image `width` x `height`, as reported: clipped
  to the image and multiplied by `scale` (original pixels per loaded pixel). Every box fer_jax
  reports lies within its image: x, y >= 0, x + w <= the image's width, y + h <= its height."""
  x0, y0 = min(max(box[0], 0), width), min(max(box[1], 0), height)
  x1, y1 = max(min(box[0] + box[2], width), x0), max(min(box[1] + box[3], height), y0)
  full_width, full_height = int(round(width * scale)), int(round(height * scale))
  x0, y0 = min(int(round(x0 * scale)), full_width), min(int(round(y0 * scale)), full_height)
  return (x0, y0, min(int(round(x1 * scale)), full_width) - x0,
          min(int(round(y1 * scale)), full_height) - y0)


def draw_faces(bgr: np.ndarray, rows: list[dict]) -> np.ndarray:
  """Draws each row's box and "emotion confidence" (with "#track" for video rows) on a BGR image
  in place, and returns it; line and text size follow the image's size."""
  cv2 = _cv2()
  thickness = max(1, round(max(bgr.shape[:2]) / 400))
  for row in rows:
    if not row.get('box'):
      continue
    x, y, w, h = row['box']
    label = f'{row["emotion"]} {row["confidence"]:.2f}'
    if 'track' in row:
      label = f'#{row["track"]} {label}'
    cv2.rectangle(bgr, (x, y), (x + w, y + h), (0, 200, 0), thickness)
    (text_width, _), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thickness,
                                         thickness)
    left = max(0, min(x, bgr.shape[1] - text_width))  # the whole label inside the image
    cv2.putText(bgr, label, (left, max(12 * thickness, y - 6)), cv2.FONT_HERSHEY_SIMPLEX,
                0.5 * thickness, (0, 200, 0), thickness, cv2.LINE_AA)
  return bgr


def _cv2():
  try:
    import cv2
  except ImportError:
    raise FerJaxError('finding faces needs OpenCV: pip install "opencv-python-headless<5", or '
                      'pass --no_detect for face crops.') from None
  return cv2


@functools.lru_cache(maxsize=None)
def _blazeface_session():
  """BlazeFace in onnxruntime, one thread: 2-3x faster a pass than OpenCV DNN on the .tflite
  (same outputs within 1e-4; experiments/blazeface_onnx.py), and the other core is left to
  decoding and the classifier."""
  try:
    import onnxruntime
  except ImportError:
    raise FerJaxError('BlazeFace runs in onnxruntime: pip install "onnxruntime>=1.17", or pass '
                      '--detector haar (or --no_detect for face crops).') from None
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = options.inter_op_num_threads = 1
  return onnxruntime.InferenceSession(BLAZEFACE_ONNX_PATH, options,
                                      providers=['CPUExecutionProvider'])


@functools.lru_cache(maxsize=None)
def _blazeface_anchors() -> np.ndarray:
  """(896, 2) anchor centres of the short-range model: 16x16 cells x 2, then 8x8 cells x 6."""
  centres = []
  for cells, per_cell in ((16, 2), (8, 6)):
    ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells,
                         indexing='ij')
    centres.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], -1), per_cell, axis=0))
  return np.concatenate(centres).astype(np.float32)


def _blazeface_squares(squares: list[np.ndarray], threshold: float
                       ) -> list[list[tuple[np.ndarray, float, np.ndarray]]]:
  """Detections in each square RGB image, as (box x0 y0 x1 y1, score, 6 landmarks) in [0, 1]; the
  squares run as one batch."""
  cv2 = _cv2()
  blob = cv2.dnn.blobFromImages(squares, 1 / 127.5, (128, 128), (127.5, 127.5, 127.5), swapRB=False)
  all_scores, all_raw = _blazeface_session().run(['classificators', 'regressors'], {'input': blob})
  anchors, found = _blazeface_anchors(), []
  for scores, raw in zip(all_scores, all_raw):
    scores = 1 / (1 + np.exp(-np.clip(scores[:, 0], -80, 80)))
    raw, square = raw / 128.0, []
    for i in np.nonzero(scores >= threshold)[0]:
      cx, cy = raw[i, 0] + anchors[i, 0], raw[i, 1] + anchors[i, 1]
      w, h = raw[i, 2], raw[i, 3]
      landmarks = raw[i, 4:16].reshape(6, 2) + anchors[i]
      square.append((np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), float(scores[i]),
                     landmarks))
    found.append(square)
  return found


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
  union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
  return float(inter / union) if union > 0 else 0.0


def _tiles(height: int, width: int) -> list[tuple[int, int, int]]:
  """Squares (x, y, side) that search a photo: the whole of it (padded to a square), then
  overlapping squares of half and a quarter of its shorter side."""
  squares = [(0, 0, max(height, width))]
  for fraction in (2, 4):
    side = min(height, width) // fraction
    if side < 96:
      break
    step = side // 2
    # The last row and column of squares sit flush with the bottom and right edges.
    ys = sorted(set(range(0, max(height - side, 0) + 1, step)) | {max(height - side, 0)})
    xs = sorted(set(range(0, max(width - side, 0) + 1, step)) | {max(width - side, 0)})
    squares += [(x, y, side) for y in ys for x in xs]
  return squares


Candidate = tuple[np.ndarray, float, np.ndarray]  # box (x0, y0, x1, y1), score, 6 landmarks (6, 2)


def detect_squares(rgb: np.ndarray, squares: list[tuple[int, int, int]],
                   threshold: float = 0.75) -> list[Candidate]:
  """BlazeFace's detections in each (x, y, side) square of an RGB uint8 image, in image pixels.
  A square may reach past the image's edges; what lies outside is black."""
  height, width = rgb.shape[:2]
  images = []
  for x, y, side in squares:
    square = np.zeros((side, side, 3), np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    patch = rgb[y0:max(min(y + side, height), y0), x0:max(min(x + side, width), x0)]
    square[y0 - y:y0 - y + patch.shape[0], x0 - x:x0 - x + patch.shape[1]] = patch
    images.append(square)
  candidates = []
  for (x, y, side), found in zip(squares, _blazeface_squares(images, threshold) if images else []):
    for box, score, landmarks in found:
      candidates.append((box * side + [x, y, x, y], score, landmarks * side + [x, y]))
  return candidates


def merge_candidates(candidates: list[Candidate]) -> list[Face]:
  """One Face per group of detections overlapping the best-scoring one by IoU > 0.3, its box and
  landmarks averaged with the scores as weights (weighted boxes, as MediaPipe blends them)."""
  candidates = sorted(candidates, key=lambda c: -c[1])
  faces, used = [], [False] * len(candidates)
  for i, (box, score, landmarks) in enumerate(candidates):
    if used[i]:
      continue
    group = [j for j in range(i, len(candidates)) if not used[j] and _iou(box, candidates[j][0]) > 0.3]
    for j in group:
      used[j] = True
    weights = np.array([candidates[j][1] for j in group])[:, None]
    box = (np.array([candidates[j][0] for j in group]) * weights).sum(0) / weights.sum()
    landmarks = (np.array([candidates[j][2] for j in group]) * weights[..., None]).sum(0) / weights.sum()
    x0, y0, x1, y1 = box
    # Landmark 0 is the person's right eye (left in the picture), 1 the left eye.
    eyes = (tuple(landmarks[0]), tuple(landmarks[1]))
    faces.append(Face((int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0))),
                      score, eyes))
  return faces


def detect_blazeface(rgb: np.ndarray, threshold: float = 0.75) -> list[Face]:
  """Every face BlazeFace finds in an RGB uint8 image, searched whole and in every tile (_tiles),
  merged across them."""
  return merge_candidates(detect_squares(rgb, _tiles(*rgb.shape[:2]), threshold))


class VideoSearch:
  """Faces in a video's frames at a bounded cost a frame, where a photo's full search (_tiles: 86
  BlazeFace passes at 640x480, 120 at 1920x1080) costs 10-20x more. Each frame gets: the whole
  frame (face boxes of ~1/7 of its longer side and up, found the frame they appear); the tiles
  of the full search that hold each tracked face's predicted box (`windows`: the face at the
  scales the photo search sees it, so both searches' boxes agree); and the next
  `tiles_per_frame` tiles of each size of the full search in turn (half and a quarter of the
  shorter side), so every tile is searched once every `sweep` frames and a face the full search
  finds is found within that many frames of entering. Detections are merged as in a photo
  (merge_candidates)."""

  def __init__(self, height: int, width: int, tiles_per_frame: int = 1, threshold: float = 0.75):
    squares = _tiles(height, width)
    self.whole, self.tiles_per_frame = squares[0], tiles_per_frame
    self.sides = sorted({t[2] for t in squares[1:]}, reverse=True)
    self.groups = [[t for t in squares[1:] if t[2] == side] for side in self.sides]
    self.threshold = threshold
    self.sweep = max([math.ceil(len(g) / tiles_per_frame) for g in self.groups], default=1)
    self.turn = 0

  def windows(self, box: tuple[int, int, int, int]) -> list[tuple[int, int, int]]:
    """Squares (x, y, side) that search a face's box as the photo search does: of each tile side
    in which BlazeFace finds it (1.6 to 7 box sizes: a margin around the face, and a box of at
    least 1/7 of the square), the tile of the photo search that holds the box nearest its
    centre, so both searches average detections of the same squares and their boxes agree (a
    square centred on the face at one scale gives boxes a few pixels off, IoU < 0.9 for a third
    of faces under 55 px). A face too large or too small for the tiles, or in a frame too small
    to have any, gets a square of 2 box sizes centred on it."""
    x, y, w, h = box
    size, centre = max(w, h), (x + w / 2, y + h / 2)
    squares = []
    for side, group in zip(self.sides, self.groups):
      if 1.6 * size <= side <= 7 * size:
        squares.append(min(group, key=lambda t: (
            not (t[0] <= x and t[1] <= y and x + w <= t[0] + side and y + h <= t[1] + side),
            (t[0] + side / 2 - centre[0]) ** 2 + (t[1] + side / 2 - centre[1]) ** 2)))
    side = max(round(2 * size), 16)
    return squares or [(int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2)), side)]

  def squares(self, predicted: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int]]:
    """The squares searched in the next frame, given the tracked faces' predicted boxes, each
    once (faces side by side share a tile)."""
    squares = [self.whole] + [w for box in predicted for w in self.windows(box)]
    for group in self.groups:
      turns = math.ceil(len(group) / self.tiles_per_frame)
      start = (self.turn % turns) * self.tiles_per_frame
      squares += group[start:start + self.tiles_per_frame]
    self.turn += 1
    return list(dict.fromkeys(squares))

  def __call__(self, rgb: np.ndarray, predicted: list[tuple[int, int, int, int]]) -> list[Face]:
    """Faces in the next frame (RGB uint8), largest first."""
    faces = merge_candidates(detect_squares(rgb, self.squares(predicted), self.threshold))
    return sorted(faces, key=lambda f: -f.box[2] * f.box[3])


def detect_haar(grey: np.ndarray) -> list[Face]:
  cv2 = _cv2()
  cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades,
                                               'haarcascade_frontalface_default.xml'))
  found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
  return [Face(tuple(int(v) for v in box), 1.0, detector='haar') for box in found]


def detect_faces(rgb: np.ndarray, detector: str = 'blazeface') -> list[Face]:
  """Faces in an RGB uint8 image, largest first."""
  if detector not in DETECTORS:
    raise FerJaxError(f'--detector={detector!r} is unknown; use one of {", ".join(DETECTORS)}.')
  if detector == 'haar':
    faces = detect_haar(np.asarray(_cv2().cvtColor(rgb, _cv2().COLOR_RGB2GRAY)))
  else:
    faces = detect_blazeface(rgb)
  return sorted(faces, key=lambda f: -f.box[2] * f.box[3])


def crop_face(grey: np.ndarray, face: Face, align: bool = True,
              framing: tuple[float, float] | None = None) -> np.ndarray:
  """A 48x48 crop framed as FER2013 frames its faces; with eye landmarks and `align`, turned so the
  eyes are level. `framing` (box side / crop side, box centre height / crop side) replaces the
  detector's FRAMING entry (experiments/photo_tta.py compares framings)."""
  cv2 = _cv2()
  x, y, w, h = face.box
  share, centre_height = framing or FRAMING[face.detector]
  side = max(w, h) / share
  centre_x = x + w / 2
  centre_y = y + h / 2 + (0.5 - centre_height) * side
  angle = 0.0
  if align and face.eyes is not None:
    (rx, ry), (lx, ly) = face.eyes
    angle = math.degrees(math.atan2(ly - ry, lx - rx))
  # Shrink by area averaging first (a warp only interpolates), so the face is ~2x the crop.
  factor = max(1, int(side // 96))
  if factor > 1:
    grey = cv2.resize(grey, (grey.shape[1] // factor, grey.shape[0] // factor),
                      interpolation=cv2.INTER_AREA)
    side, centre_x, centre_y = side / factor, centre_x / factor, centre_y / factor
  matrix = cv2.getRotationMatrix2D((centre_x, centre_y), angle, 48.0 / side)
  matrix[:, 2] += (24 - centre_x, 24 - centre_y)
  return cv2.warpAffine(grey, matrix, (48, 48), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)


def face_crops(rgb: np.ndarray, grey: np.ndarray, scale: float = 1.0, detect: bool | None = None,
               detector: str = 'blazeface', align: bool = True) -> tuple[np.ndarray, list]:
  """(48x48 crops (N, 48, 48), boxes in original pixels clipped to the image (clipped_box), None for
  a whole-image crop) of an
  image loaded by fer_jax.data.images.load_image. detect=None: images up to CROP_MAX_SIDE are
  crops, larger ones are searched, and those up to CROP_FALLBACK_SIDE with no face found are
  crops too; True: always searched (no fallback); False: always a crop."""
  from fer_jax.data.images import to_face48
  side = max(grey.shape) * scale
  if detect is False or (detect is None and side <= CROP_MAX_SIDE):
    return to_face48(grey)[None], [None]
  found = detect_faces(rgb, detector)
  if not found and detect is None and side <= CROP_FALLBACK_SIDE:
    return to_face48(grey)[None], [None]
  crops = (np.stack([crop_face(grey, face, align) for face in found]) if found
           else np.zeros((0, 48, 48), np.uint8))
  height, width = grey.shape
  return crops, [clipped_box(face.box, width, height, scale) for face in found]


def dataset_face(path: str) -> np.ndarray:
  """The 48x48 face of a labelled dataset image: its largest face by the rule of face_crops, or
  the whole image when no face is found (every labelled image is scored)."""
  from fer_jax.data.images import load_image, to_face48
  rgb, grey, scale = load_image(path)
  crops, _ = face_crops(rgb, grey, scale)
  return crops[0] if len(crops) else to_face48(grey)
