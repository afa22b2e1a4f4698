"""Faces in a video or a camera stream: every N-th frame read with OpenCV in constant memory, the
faces of several frames classified in one compiled call, each face followed across frames by box
overlap (a track), its probabilities smoothed along the track, and optionally the video written
back with boxes, emotions and confidences drawn on it.
"""
import dataclasses
import time
from typing import Any, Iterator

import numpy as np

from fer_jax import FerJaxError, faces as fer_faces, metrics

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')


@dataclasses.dataclass
class Track:
  id: int
  box: tuple[int, int, int, int]
  probabilities: np.ndarray
  missed: int = 0


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
  """Intersection over union of two (x, y, w, h) boxes (fer_jax.faces' IoU takes corners)."""
  corners = lambda x, y, w, h: np.array([x, y, x + w, y + h], np.float64)  # noqa: E731
  return fer_faces._iou(corners(*a), corners(*b))


class Tracker:
  """Greedy box-overlap matching; a track's probabilities are an exponential moving average
  (weight `smooth` on the new frame; 1 = no smoothing); a track unseen for `patience` sampled
  frames ends."""

  def __init__(self, smooth: float = 0.5, min_iou: float = 0.3, patience: int = 5):
    if not 0 < smooth <= 1:
      raise FerJaxError(f'--smooth={smooth} is out of range; set it in (0, 1] (1 = no smoothing).')
    self.smooth, self.min_iou, self.patience = smooth, min_iou, patience
    self.tracks: list[Track] = []
    self.next_id = 0

  def update(self, boxes: list, probabilities: np.ndarray) -> list[Track]:
    """The tracks of this frame's faces, in the order of `boxes`."""
    pairs = sorted(((_overlap(t.box, b), ti, bi) for ti, t in enumerate(self.tracks)
                    for bi, b in enumerate(boxes)), reverse=True)
    assigned: dict[int, Track] = {}
    used = set()
    for overlap, ti, bi in pairs:
      if overlap < self.min_iou or ti in used or bi in assigned:
        continue
      track = self.tracks[ti]
      track.box, track.missed = boxes[bi], 0
      track.probabilities = self.smooth * probabilities[bi] + (1 - self.smooth) * track.probabilities
      assigned[bi], used = track, used | {ti}
    for ti, track in enumerate(self.tracks):
      if ti not in used:
        track.missed += 1
    for bi, box in enumerate(boxes):
      if bi not in assigned:
        assigned[bi] = Track(self.next_id, box, np.asarray(probabilities[bi]))
        self.next_id += 1
        self.tracks.append(assigned[bi])
    self.tracks = [t for t in self.tracks if t.missed <= self.patience]
    return [assigned[bi] for bi in range(len(boxes))]


def open_capture(source: Any):
  """cv2.VideoCapture of a file or a camera index; one sentence when it cannot be read."""
  cv2 = fer_faces._cv2()
  capture = cv2.VideoCapture(source)
  if not capture.isOpened():
    what = f'camera {source}' if isinstance(source, int) else str(source)
    raise FerJaxError(f'{what} cannot be opened as a video; pass an .mp4 / .avi / .mov file '
                      'OpenCV can decode, or another --camera index.')
  return capture


def frames(capture, every: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
  """(frame index, time in seconds, RGB frame) of every `every`-th frame."""
  cv2 = fer_faces._cv2()
  fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
  index = 0
  while True:
    if index % every:
      if not capture.grab():
        return
    else:
      ok, bgr = capture.read()
      if not ok:
        return
      yield index, index / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    index += 1


def _draw(bgr: np.ndarray, rows: list[dict]) -> np.ndarray:
  cv2 = fer_faces._cv2()
  for row in rows:
    x, y, w, h = row['box']
    cv2.rectangle(bgr, (x, y), (x + w, y + h), (0, 200, 0), 2)
    cv2.putText(bgr, f'#{row["track"]} {row["emotion"]} {row["confidence"]:.2f}',
                (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 0), 1, cv2.LINE_AA)
  return bgr


def predict_video(predictor: Any, source: Any, every: int = 1, smooth: float = 0.5,
                  annotate: str | None = None, chunk: int = 16,
                  progress: bool = True) -> Iterator[dict]:
  """One row per face per sampled frame: frame, time_s, track, box, emotion, confidence,
  probabilities (smoothed along the track). Frames are classified `chunk` at a time."""
  if every < 1:
    raise FerJaxError(f'--every={every} must be at least 1 (1 = every frame).')
  cv2 = fer_faces._cv2()
  capture = open_capture(source)
  total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
  writer, tracker = None, Tracker(smooth)
  bar = metrics.ProgressBar(max(total, 1), 'frames', enabled=progress and total > 0)
  start, sampled, last_rows = time.perf_counter(), 0, []
  try:
    pending = []

    def flush():
      nonlocal last_rows
      crops = [c for _, _, _, frame_crops, _ in pending for c in frame_crops]
      probabilities = (predictor.probabilities(np.stack(crops)) if crops
                       else np.zeros((0, len(predictor.labels))))
      offset = 0
      for index, seconds, rgb, frame_crops, boxes in pending:
        frame_probabilities = probabilities[offset:offset + len(frame_crops)]
        offset += len(frame_crops)
        rows = []
        for track, box in zip(tracker.update(boxes, frame_probabilities), boxes):
          p = track.probabilities
          best = int(np.argmax(p))
          rows.append({'frame': index, 'time_s': round(seconds, 3), 'track': track.id,
                       'box': list(box), 'emotion': predictor.labels[best],
                       'confidence': round(float(p[best]), 6),
                       'probabilities': {n: round(float(v), 6) for n, v in zip(predictor.labels, p)}})
        last_rows = rows
        yield from rows
      pending.clear()

    for index, seconds, rgb in frames(capture, every):
      sampled += 1
      grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
      found = fer_faces.detect_faces(rgb, predictor.detector)
      crops = [fer_faces.crop_face(grey, face, predictor.align) for face in found]
      pending.append((index, seconds, rgb, crops, [f.box for f in found]))
      if len(pending) >= chunk or annotate:
        yield from flush()
      if annotate:
        if writer is None:
          fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
          writer = cv2.VideoWriter(annotate, cv2.VideoWriter_fourcc(*'mp4v'), fps / every,
                                   (rgb.shape[1], rgb.shape[0]))
        writer.write(_draw(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), last_rows))
      bar.update(min(index + 1, max(total, 1)))
    yield from flush()
  finally:
    bar.close()
    capture.release()
    if writer is not None:
      writer.release()
  if sampled == 0:
    raise FerJaxError(f'{source} has no frames OpenCV can decode; pass another video.')
  elapsed = time.perf_counter() - start
  from absl import logging
  logging.info('%s: %d frames sampled in %.1f s (%.1f frames/s), %d tracks', source, sampled,
               elapsed, sampled / elapsed, tracker.next_id)
