"""Faces in a video or a camera stream: every N-th frame read with OpenCV in constant memory, the
faces of several frames classified in one compiled call, each face followed across frames (a
track), its probabilities smoothed along the track, and optionally the video written back with
boxes, emotions and confidences drawn on it.

Tracks. A face keeps its track's id when its box centre lies within 0.6 box sizes (the mean of
the track's box width and height) per frame since the track was last seen, and at most 2 box
sizes, of where the track predicts it: its last centre, or that centre moved on at the track's
last velocity (constant motion), whichever is nearer. Reach counts frames, not sampled frames,
because box overlap between samples loses every face that moves half its box between two samples,
as most moving faces do at `--every 4`. Faces and tracks are paired so
that as many as can be are, with the least total distance, so two people side by side keep their
ids even when each moves nearer the other's last place. A track unseen for more than 15 frames,
or three sampled frames when that is longer, ends: it survives two missed samples.

Truncated videos. When fewer frames decode than the container states (CAP_PROP_FRAME_COUNT, when
it states one > 0), short by more than 1 frame and more than 1 % (some .webm / .mkv state an
estimate), or the decoder raises, the rows of every decoded frame are yielded first and then a
FerJaxError names both counts, so `predict` prints one `error:` line and exits 1. Cameras state no
count.
"""
import dataclasses
import math
import os
import time
from typing import Any, Iterator

import numpy as np

from fer_jax import FerJaxError, faces as fer_faces, metrics, plural

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
PATIENCE = 15  # frames a track outlives its last sighting (predict_video: >= 3 sampled frames)
Box = tuple[int, int, int, int]


@dataclasses.dataclass
class Track:
  """A followed face: its last box, the frame it was seen in, its centre's velocity (pixels per
  frame, from its last two sightings) and its smoothed probabilities."""
  id: int
  box: Box
  probabilities: np.ndarray
  frame: int = 0
  velocity: tuple[float, float] = (0.0, 0.0)


def _centre(box: Box) -> np.ndarray:
  x, y, w, h = box
  return np.array([x + w / 2, y + h / 2], np.float64)


def _distance(track: Track, box: Box, frame: int) -> float:
  """Pixels from `box`'s centre to the nearer of the track's predictions for `frame`: its last
  centre (a face that stopped) or that centre moved on at its velocity."""
  last, centre = _centre(track.box), _centre(box)
  moved = last + np.asarray(track.velocity) * (frame - track.frame)
  return float(min(np.hypot(*(centre - last)), np.hypot(*(centre - moved))))


def _match(distances: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
  """(row, column) pairs among the allowed ones: as many as can be, then the least total distance
  (a group moving together keeps its ids, which nearest-first matching swaps)."""
  if not allowed.any():
    return []
  from scipy.optimize import linear_sum_assignment  # a JAX dependency; imported for videos only
  barred = distances[allowed].sum() + 1.0  # above any set of allowed pairs
  rows, columns = linear_sum_assignment(np.where(allowed, distances, barred))
  return [(r, c) for r, c in zip(rows, columns) if allowed[r, c]]


class Tracker:
  """Follows faces across frames by the rule in the module docstring (`max_motion` box sizes per
  frame, at most `max_reach`, tracks ending `patience` frames after their last sighting); a track's
  probabilities are an exponential moving average (weight `smooth` on the new frame; 1 = none)."""

  def __init__(self, smooth: float = 0.5, max_motion: float = 0.6, max_reach: float = 2.0,
               patience: int = PATIENCE):
    if not 0 < smooth <= 1:
      raise FerJaxError(f'--smooth={smooth} is out of range; set it in (0, 1] (1 = no smoothing).')
    self.smooth, self.max_motion, self.max_reach = smooth, max_motion, max_reach
    self.patience = patience
    self.tracks: list[Track] = []
    self.next_id, self.frame = 0, -1

  def reach(self, track: Track, frame: int) -> float:
    """Pixels a face may lie from `track`'s prediction at `frame` and still continue it."""
    gap = max(frame - track.frame, 1)
    return (track.box[2] + track.box[3]) / 2 * min(self.max_motion * gap, self.max_reach)

  def update(self, boxes: list, probabilities: np.ndarray, frame: int | None = None) -> list[Track]:
    """The tracks of the faces in `boxes`, seen at `frame` (the next one when None), in order."""
    frame = self.frame + 1 if frame is None else frame
    self.frame = frame
    self.tracks = [t for t in self.tracks if frame - t.frame <= self.patience]
    assigned: dict[int, Track] = {}
    if self.tracks and boxes:
      distances = np.array([[_distance(t, b, frame) for b in boxes] for t in self.tracks])
      reach = np.array([self.reach(t, frame) for t in self.tracks])
      for ti, bi in _match(distances, distances <= reach[:, None]):
        track = self.tracks[ti]
        gap = max(frame - track.frame, 1)
        track.velocity = tuple((_centre(boxes[bi]) - _centre(track.box)) / gap)
        track.box, track.frame = tuple(boxes[bi]), frame
        track.probabilities = (self.smooth * probabilities[bi]
                               + (1 - self.smooth) * track.probabilities)
        assigned[bi] = track
    for bi, box in enumerate(boxes):
      if bi not in assigned:
        assigned[bi] = Track(self.next_id, tuple(box), np.asarray(probabilities[bi]), frame)
        self.next_id += 1
        self.tracks.append(assigned[bi])
    return [assigned[bi] for bi in range(len(boxes))]


def open_capture(source: Any):
  """cv2.VideoCapture of a file or a camera index; one sentence when it cannot be read."""
  # FFmpeg's own lines ("[mjpeg @ 0x...] overread 8") would repeat, unreadably, what our one
  # line about a damaged file says; OPENCV_FFMPEG_LOGLEVEL set by the user still wins.
  os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')
  cv2 = fer_faces._cv2()
  capture = cv2.VideoCapture(source)
  if not capture.isOpened():
    what = f'camera {source}' if isinstance(source, int) else str(source)
    raise FerJaxError(f'{what} cannot be opened as a video; pass an .mp4 / .avi / .mov file '
                      'OpenCV can decode, or another --camera index.')
  return capture


def frame_rate(capture) -> float:
  """Frames per second the container states; 30 when it states none."""
  fps = capture.get(fer_faces._cv2().CAP_PROP_FPS)
  return fps if math.isfinite(fps) and fps > 0 else 30.0


def stated_frames(capture) -> int:
  """The frame count the container states; 0 when it states none (cameras, some streams)."""
  count = capture.get(fer_faces._cv2().CAP_PROP_FRAME_COUNT)
  return int(count) if math.isfinite(count) and count > 0 else 0


@dataclasses.dataclass
class Decoding:
  """How far `frames` got: frames decoded (sampled or skipped) and the decoder's error, if one
  stopped it; read after the frames, to tell a whole video from a cut one."""
  decoded: int = 0
  error: str | None = None


def frames(capture, every: int = 1,
           decoding: Decoding | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
  """(frame index, time in seconds, RGB frame) of every `every`-th frame, until the video ends
  or its decoder fails; `decoding` records which."""
  cv2 = fer_faces._cv2()
  fps, decoding = frame_rate(capture), Decoding() if decoding is None else decoding
  while True:
    index = decoding.decoded
    try:
      ok, bgr = capture.read() if index % every == 0 else (capture.grab(), None)
    except cv2.error as e:
      decoding.error = ' '.join(str(e).split())
      return
    if not ok:
      return
    decoding.decoded += 1
    if bgr is not None:
      yield index, index / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def shortfall(name: str, decoded: int, stated: int, fps: float,
              error: str | None = None) -> str | None:
  """The one sentence about a video that stopped before its end (rule in the module docstring),
  or None when it decoded whole, or as far as anyone can tell (no count, no error)."""
  if stated > 0 and stated - decoded <= max(1, stated // 100):
    return None
  if stated <= 0 and error is None:
    return None
  count = (f'{decoded} of the {stated} frames its container states' if stated > 0
           else f'{decoded} frames')
  what = f'decoding failed after {count} ({error})' if error else f'decoded {count}'
  length = f' of {stated / fps:.2f} s' if stated > 0 else ''
  return (f'{name}: {what}, so the video is truncated or damaged and its rows cover only the first '
          f'{decoded / fps:.2f} s{length}; re-download or re-encode it to classify the rest.')


def predict_video(predictor: Any, source: Any, every: int = 1, smooth: float = 0.5,
                  annotate: str | None = None, chunk: int = 16,
                  progress: bool = True) -> Iterator[dict]:
  """One row per face per sampled frame: frame, time_s, track, box, emotion, confidence,
  probabilities (smoothed along the track). Frames are classified `chunk` at a time. A video that
  stops early raises FerJaxError after the rows of every frame it gave."""
  if every < 1:
    raise FerJaxError(f'--every={every} must be at least 1 (1 = every frame).')
  cv2 = fer_faces._cv2()
  capture = open_capture(source)
  fps, total = frame_rate(capture), stated_frames(capture)
  writer, tracker = None, Tracker(smooth, patience=max(PATIENCE, 3 * every))
  decoding = Decoding()
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
        for track, box in zip(tracker.update(boxes, frame_probabilities, index), boxes):
          p = track.probabilities
          best = int(np.argmax(p))
          rows.append({'frame': index, 'time_s': round(seconds, 3), 'track': track.id,
                       'box': list(box), 'emotion': predictor.labels[best],
                       'confidence': round(float(p[best]), 6),
                       'probabilities': {n: round(float(v), 6) for n, v in zip(predictor.labels, p)}})
        last_rows = rows
        yield from rows
      pending.clear()

    for index, seconds, rgb in frames(capture, every, decoding):
      sampled += 1
      grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
      found = fer_faces.detect_faces(rgb, predictor.detector)
      crops = [fer_faces.crop_face(grey, face, predictor.align) for face in found]
      height, width = grey.shape
      pending.append((index, seconds, rgb, crops,
                      [fer_faces.clipped_box(f.box, width, height) for f in found]))
      if len(pending) >= chunk or annotate:
        yield from flush()
      if annotate:
        if writer is None:
          writer = cv2.VideoWriter(annotate, cv2.VideoWriter_fourcc(*'mp4v'), fps / every,
                                   (rgb.shape[1], rgb.shape[0]))
        writer.write(fer_faces.draw_faces(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), last_rows))
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
  logging.info('%s: %s sampled in %.1f s (%.1f frames/s), %s', source, plural(sampled, 'frame'),
               elapsed, sampled / elapsed, plural(tracker.next_id, 'track'))
  name = f'camera {source}' if isinstance(source, int) else str(source)
  problem = shortfall(name, decoding.decoded, 0 if isinstance(source, int) else total, fps,
                      decoding.error)
  if problem:
    raise FerJaxError(problem)
