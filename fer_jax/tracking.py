"""Face tracks across a video's frames: which face in a frame continues which track.

A face keeps its track's id when its box centre lies within 0.6 box sizes (the mean of
the track's box width and height) per frame since the track was last seen, and at most 2 box
sizes, of where the track predicts it: its last centre, or that centre moved on at the track's
last velocity (constant motion), whichever is nearer. Reach counts frames, not sampled frames,
because box overlap between samples loses every face that moves half its box between two samples,
as most moving faces do at `--every 4`. Faces and tracks are paired so
that as many as can be are, with the least total distance, so two people side by side keep their
ids even when each moves nearer the other's last place. A track unseen for more than 15 frames,
or three sampled frames when that is longer, ends: it survives two missed samples. A track seen
in fewer than MIN_HITS = 3 sampled frames (fewer when the whole video has fewer) is taken for a
false detection, and fer_jax.video drops its rows.
"""
import dataclasses

import numpy as np

from fer_jax import FerJaxError

PATIENCE = 15  # frames a track outlives its last sighting (predict_video: >= 3 sampled frames)
MIN_HITS = 3  # sampled frames a track must be seen in to be reported (shorter ones are false)
Box = tuple[int, int, int, int]


@dataclasses.dataclass(eq=False)
class Track:
  """A followed face: its last box, the frame it was seen in, how many frames it was seen in, its
  centre's velocity (pixels per frame, from its last two sightings) and its smoothed
  probabilities (None until its first face is classified)."""
  id: int
  box: Box
  frame: int = 0
  hits: int = 1
  velocity: tuple[float, float] = (0.0, 0.0)
  probabilities: np.ndarray | None = None


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

  def predicted(self, frame: int) -> list[Box]:
    """Each live track's box at `frame`, moved on at its velocity: where to look for its face."""
    boxes = []
    for t in self.tracks:
      if frame - t.frame <= self.patience:
        dx, dy = np.asarray(t.velocity) * (frame - t.frame)
        boxes.append((int(round(t.box[0] + dx)), int(round(t.box[1] + dy)), t.box[2], t.box[3]))
    return boxes

  def missing(self, boxes: list, frame: int) -> bool:
    """Whether a track seen in the last sampled frame has no box within its reach at `frame`."""
    return any(all(_distance(t, b, frame) > self.reach(t, frame) for b in boxes)
               for t in self.tracks if t.frame == self.frame)

  def update(self, boxes: list, frame: int | None = None) -> list[Track]:
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
        track.box, track.frame, track.hits = tuple(boxes[bi]), frame, track.hits + 1
        assigned[bi] = track
    for bi, box in enumerate(boxes):
      if bi not in assigned:
        assigned[bi] = Track(self.next_id, tuple(box), frame)
        self.next_id += 1
        self.tracks.append(assigned[bi])
    return [assigned[bi] for bi in range(len(boxes))]

  def blend(self, track: Track, probabilities: np.ndarray) -> np.ndarray:
    """The track's probabilities after this frame's face (frames taken in order)."""
    track.probabilities = (np.asarray(probabilities) if track.probabilities is None else
                           self.smooth * probabilities + (1 - self.smooth) * track.probabilities)
    return track.probabilities
