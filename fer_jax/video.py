"""Faces in a video or a camera stream: frames decoded on a thread in constant memory, faces found
at a bounded cost a frame, the faces of several frames classified in one onnxruntime call on a
thread of its own while the next frames are searched (a live source: frame by frame), each face
followed across frames (a track), its probabilities smoothed along the track, and optionally the
video written back (or, live, shown) with boxes, emotions and confidences drawn on it.

Search. A photo's full search (the whole image and 85-119 overlapping tiles) costs ~0.25 s a
frame on a 2-core CPU. A video's frames instead get fer_jax.faces.VideoSearch: the whole frame,
the photo search's tiles that hold each tracked face, and one tile of each size in turn (every
tile once in `sweep` frames: 15 at 480x320, 70 at 640x480, 98 at 1280x720 and 1920x1080); the
first frame, and any frame in which a face seen in the last sampled frame is not found near
where its track predicts it, is searched in full as a photo.
`search='full'` searches every frame in full (the slower reference the benchmark compares with).

Tracks follow faces across frames by the rules of fer_jax.tracking; rows of tracks seen in
fewer than MIN_HITS sampled frames are dropped, so rows reach the caller once their tracks are
decided, typically 2 sampled frames late.

Truncated videos. When fewer frames decode than the container states (CAP_PROP_FRAME_COUNT, when
it states one > 0), short by more than 1 frame and more than 1 % (some .webm / .mkv state an
estimate), or the decoder raises, the rows of every decoded frame are yielded first and then a
FerJaxError names both counts, so `predict` prints one `error:` line and exits 1. Cameras state no
count.
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import os
import queue
import sys
import threading
import time
from typing import Any, Iterator

import numpy as np

from fer_jax import FerJaxError, faces as fer_faces, metrics, plural
from fer_jax.tracking import MIN_HITS, PATIENCE, Tracker

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
BATCH = 64  # views classified in one compiled call (Predictor's batch sizes: 1, 2, 10, 64, 512)


def open_capture(source: Any):
  """cv2.VideoCapture of a file or a camera index; one sentence when it cannot be read."""
  # FFmpeg's own lines ("[mjpeg @ 0x...] overread 8") would repeat, unreadably, what our one
  # line about a damaged file says; OPENCV_FFMPEG_LOGLEVEL set by the user still wins.
  os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')
  cv2 = fer_faces._cv2()
  capture = cv2.VideoCapture(source)
  if not capture.isOpened():
    if isinstance(source, int):
      raise FerJaxError(f'camera {source} cannot be opened; check that it is connected and not in '
                        'use, or pass another --camera index (a video file goes as an argument '
                        'of its own, without --camera).')
    raise FerJaxError(f'{source} cannot be opened as a video; pass an .mp4 / .avi / .mov file '
                      'OpenCV can decode.')
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
  seconds: float = 0.0  # spent decoding and converting (on the reading thread)


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


class Reader:
  """(frame index, time in seconds, RGB frame, grey frame) of `frames`, decoded on a thread while
  the caller works on earlier frames (OpenCV releases the GIL while it decodes). A file's frames
  all arrive, `depth` at most held; a live source keeps only its newest frame, so a slow consumer
  sees the present, not a growing backlog. `close` stops the thread."""

  def __init__(self, capture, every: int, decoding: Decoding, live: bool = False, depth: int = 4):
    self.queue: queue.Queue = queue.Queue(maxsize=1 if live else depth)
    self.live, self.stop = live, threading.Event()
    self.thread = threading.Thread(target=self._read, args=(capture, every, decoding), daemon=True)
    self.thread.start()

  def _read(self, capture, every: int, decoding: Decoding) -> None:
    cv2 = fer_faces._cv2()
    start = time.perf_counter()
    try:
      for index, seconds, rgb in frames(capture, every, decoding):
        item = (index, seconds, rgb, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        decoding.seconds += time.perf_counter() - start
        self._put(item)
        if self.stop.is_set():
          return
        start = time.perf_counter()
    finally:
      self._put(None)

  def _put(self, item) -> None:
    while not self.stop.is_set():
      if self.live and item is not None and self.queue.full():
        with contextlib.suppress(queue.Empty):
          self.queue.get_nowait()  # a newer frame replaces one not yet taken
      try:
        self.queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self) -> Iterator[tuple[int, float, np.ndarray, np.ndarray]]:
    while (item := self.queue.get()) is not None:
      yield item

  def close(self) -> None:
    self.stop.set()
    self.thread.join(timeout=5)  # a camera that hangs in read() is left to its daemon thread


class Window:
  """The on-screen window of a live run: each frame with its faces and the frames/s; open only
  where a display exists and OpenCV can draw one (opencv-python-headless cannot)."""

  def __init__(self, title: str, enabled: bool):
    self.title, self.open, self.fps, self.last = title, False, 0.0, time.perf_counter()
    if enabled and (os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')
                    or sys.platform in ('darwin', 'win32')):
      with contextlib.suppress(Exception):  # cv2.error: built without a GUI backend
        fer_faces._cv2().namedWindow(title, fer_faces._cv2().WINDOW_NORMAL)
        self.open = True

  def show(self, bgr: np.ndarray) -> bool:
    """Shows a drawn frame with the frames/s; False once the user pressed q or Esc."""
    now = time.perf_counter()
    rate, self.last = 1 / max(now - self.last, 1e-6), now
    self.fps = 0.9 * self.fps + 0.1 * rate if self.fps else rate  # a running average
    if not self.open:
      return True
    cv2 = fer_faces._cv2()
    cv2.putText(bgr, f'{self.fps:.1f} frames/s', (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                (0, 200, 255), 2, cv2.LINE_AA)
    cv2.imshow(self.title, bgr)
    return cv2.waitKey(1) & 0xFF not in (ord('q'), 27)

  def close(self) -> None:
    if self.open:
      fer_faces._cv2().destroyWindow(self.title)


def classify(predictor: Any, crops: list[np.ndarray], views: int) -> np.ndarray:
  """(N, classes) probabilities of the crops, in calls of at most BATCH views: in onnxruntime
  where the model has it (Predictor.runtimes; 1.5-3x faster at a frame's few faces), else in JAX
  in calls whose views fill one of the Predictor's batch sizes exactly (a padded batch costs as
  much as a full one)."""
  runtime = predictor.runtimes[-1]
  sizes = ([max(BATCH // views, 1)] if runtime == 'onnxruntime' else
           sorted({max(size // views, 1) for size in predictor.buckets if size <= BATCH}, reverse=True))
  out, start = [np.zeros((0, len(predictor.labels)), np.float32)], 0
  while start < len(crops):
    size = next((s for s in sizes if s <= len(crops) - start), len(crops) - start)
    out.append(predictor.probabilities(np.stack(crops[start:start + size]), detected=True,
                                       runtime=runtime))
    start += size
  return np.concatenate(out)


STAGES = ('decode', 'detect', 'crop', 'classify', 'track', 'write')


def predict_video(predictor: Any, source: Any, every: int = 1, smooth: float = 0.5,
                  annotate: str | None = None, progress: bool = True, search: str = 'track',
                  live: bool | None = None, show: bool | None = None,
                  stages: dict[str, float] | None = None) -> Iterator[dict]:
  """One row per face per sampled frame of `source` (a path, a camera index or an opened
  cv2.VideoCapture-like object): frame, time_s, track, box, emotion, confidence,
  probabilities (smoothed along the track), for the tracks kept (MIN_HITS). `search='track'`
  finds BlazeFace faces with VideoSearch; 'full' searches each frame as a photo (detect_faces).
  Faces of several frames are classified in one call of at most BATCH views, on a thread while
  the next frames are searched; a live source (default: a camera index) is classified frame by
  frame, keeping only the newest frame, and shown on screen when `show` (default: live) and a
  display exists. `annotate`: the path of the video written with the rows drawn. `stages`, when
  given, gets the seconds spent in each of STAGES and the count of full searches
  ('full_searches'). A video that stops early raises FerJaxError after the rows of every frame
  it gave."""
  if every < 1:
    raise FerJaxError(f'--every={every} must be at least 1 (1 = every frame).')
  if search not in ('track', 'full'):
    raise FerJaxError(f'search={search!r} is unknown; use track or full.')
  cv2 = fer_faces._cv2()
  live = isinstance(source, int) if live is None else live
  tracker = Tracker(smooth, patience=max(PATIENCE, 3 * every))
  capture = source if hasattr(source, 'read') else open_capture(source)
  fps, total = frame_rate(capture), 0 if live else stated_frames(capture)
  from fer_jax.predictor import TTA_VARIANTS
  views = len(TTA_VARIANTS[predictor.tta_for(detected=True)](np.zeros((1, 48, 48, 1), np.uint8)))
  capacity = max(1, BATCH // views)
  name = f'camera {source}' if isinstance(source, int) else str(source)
  window = Window(f'fer_jax: {name}', live if show is None else show)
  decoding, writer, finder = Decoding(), None, None
  timer = {stage: 0.0 for stage in STAGES} if stages is None else stages
  for stage in STAGES:
    timer.setdefault(stage, 0.0)
  bar = metrics.ProgressBar(max(total, 1), 'frames', enabled=progress and total > 0)
  if live:  # compile and load before the first frame, so the stream starts in the present
    classify(predictor, [np.zeros((48, 48), np.uint8)] * (capacity + capacity // 2 + 1), views)
    fer_faces.detect_squares(np.zeros((128, 128, 3), np.uint8), [(0, 0, 128)])
  reader = Reader(capture, every, decoding, live)
  start, sampled, pending, held = time.perf_counter(), 0, [], collections.deque()
  classifier, inflight = concurrent.futures.ThreadPoolExecutor(1), collections.deque()
  full_searches, unwritten = 0, {}  # unwritten: a file's sampled frames not yet annotated

  def write(bgr: np.ndarray) -> None:
    nonlocal writer
    if writer is None:
      writer = cv2.VideoWriter(annotate, cv2.VideoWriter_fourcc(*'mp4v'), fps / every,
                               (bgr.shape[1], bgr.shape[0]))
    writer.write(bgr)

  def release(final: bool) -> Iterator[dict]:
    """Rows of the oldest frames whose every track is decided: kept once seen MIN_HITS times
    (fewer when the video has fewer sampled frames), dropped once ended short of that. A file's
    annotated frame is drawn then, with the same rows, so a track is boxed from its first frame."""
    need = min(MIN_HITS, sampled) if final else MIN_HITS
    while held:
      index, rows, tracks = held[0]
      if not final and any(t.hits < need and t in tracker.tracks for t in tracks):
        return
      held.popleft()
      kept = [row for row, t in zip(rows, tracks) if t.hits >= need]
      if index in unwritten:
        clock = time.perf_counter()
        write(fer_faces.draw_faces(cv2.cvtColor(unwritten.pop(index), cv2.COLOR_RGB2BGR), kept))
        timer['write'] += time.perf_counter() - clock
      yield from kept

  def classify_timed(crops: list[np.ndarray]) -> tuple[np.ndarray, float]:
    clock = time.perf_counter()
    return classify(predictor, crops, views), time.perf_counter() - clock

  def flush(wait: bool) -> list[dict]:
    """Sends the pending frames' faces to the classifier's thread, which works while the next
    frames are searched (onnxruntime and OpenCV release the GIL); then turns the classified
    batches into rows, in order: all of them when `wait`, else all but the newest (at most one
    is ever in flight). Returns the last frame's rows (shown and drawn)."""
    if pending:
      crops = [c for _, _, frame_crops, _, _ in pending for c in frame_crops]
      inflight.append((classifier.submit(classify_timed, crops), list(pending)))
      pending.clear()
    rows = []
    while inflight and (wait or len(inflight) > 1):
      future, frames_done = inflight.popleft()
      probabilities, spent = future.result()
      timer['classify'] += spent
      offset = 0
      for index, seconds, frame_crops, boxes, tracks in frames_done:
        rows = []
        for track, box, p in zip(tracks, boxes, probabilities[offset:offset + len(frame_crops)]):
          p = tracker.blend(track, p)
          best = int(np.argmax(p))
          rows.append({'frame': index, 'time_s': round(seconds, 3), 'track': track.id,
                       'box': list(box), 'emotion': predictor.labels[best],
                       'confidence': round(float(p[best]), 6),
                       'probabilities': {n: round(float(v), 6) for n, v in zip(predictor.labels, p)}})
        offset += len(frame_crops)
        held.append((index, rows, tracks))
    return rows

  try:
    for index, seconds, rgb, grey in reader:
      sampled += 1
      clock = time.perf_counter()
      if search == 'full' or predictor.detector != 'blazeface':
        found = fer_faces.detect_faces(rgb, predictor.detector)
      else:
        finder = finder or fer_faces.VideoSearch(*grey.shape)
        found = finder(rgb, tracker.predicted(index)) if sampled > 1 else None
        if found is None or tracker.missing([f.box for f in found], index):  # first or lost
          found = fer_faces.detect_faces(rgb, predictor.detector)
          full_searches += 1
      timer['detect'] += (now := time.perf_counter()) - clock
      crops = [fer_faces.crop_face(grey, face, predictor.align) for face in found]
      height, width = grey.shape
      boxes = [fer_faces.clipped_box(f.box, width, height) for f in found]
      timer['crop'] += (clock := time.perf_counter()) - now
      tracks = tracker.update(boxes, index)
      timer['track'] += time.perf_counter() - clock
      if sum(len(p[2]) for p in pending) + len(crops) > capacity:
        flush(wait=False)
      pending.append((index, seconds, crops, boxes, tracks))
      if annotate and not live:  # drawn once its rows are decided (release)
        unwritten[index] = rgb
      if live:  # drawn and shown now, with the tracks confirmed so far
        rows = [r for r, t in zip(flush(wait=True), tracks) if t.hits >= MIN_HITS]
        clock = time.perf_counter()
        bgr = fer_faces.draw_faces(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), rows)
        if annotate:
          write(bgr)
        keep_going = window.show(bgr)
        timer['write'] += time.perf_counter() - clock
        if not keep_going:
          break
      yield from release(final=False)
      bar.update(min(index + 1, max(total, 1)))
    flush(wait=True)
    yield from release(final=True)
  finally:
    classifier.shutdown(wait=True, cancel_futures=True)
    reader.close()
    window.close()
    bar.close()
    capture.release()
    if writer is not None:
      writer.release()
    timer['decode'] = decoding.seconds
  if sampled == 0:
    raise FerJaxError(f'{source} has no frames OpenCV can decode; pass another video.')
  elapsed = time.perf_counter() - start
  from absl import logging
  logging.info('%s: %s sampled in %.1f s (%.1f frames/s), %s, %d full searches', source,
               plural(sampled, 'frame'), elapsed, sampled / elapsed, plural(tracker.next_id, 'track'),
               full_searches)
  timer['full_searches'] = full_searches
  problem = shortfall(name, decoding.decoded, total, fps, decoding.error)
  if problem:
    raise FerJaxError(problem)
