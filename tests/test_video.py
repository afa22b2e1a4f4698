"""Video: a clip the test writes itself (the astronaut moving across a grey frame), read frame by
frame; each sampled frame's row is what predict gives for that frame, one track follows the face
(also across `--every` gaps and missed frames, and two faces side by side stay two), smoothing
follows its recurrence, bad videos are one line each, and a cut video keeps its rows but fails."""
import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from skimage import data as skimage_data

from fer_jax import FerJaxError, faces as fer_faces, tracking, video
from fer_jax.predictor import Predictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def clip(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp('video') / 'clip.mp4')
  face = cv2.resize(cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR), (256, 256),
                    interpolation=cv2.INTER_AREA)
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 10, (480, 320))
  for i in range(8):
    frame = np.full((320, 480, 3), 90, np.uint8)
    frame[32:288, 20 + 25 * i:276 + 25 * i] = face
    writer.write(frame)
  writer.release()
  return path


@pytest.fixture(scope='module')
def moving_avi(tmp_path_factory) -> str:
  """60 MJPG frames of a face (a ~48 px box) moving 8 px a frame: 32 px, 2/3 of a box, between
  samples at --every 4, where box overlap (IoU 0.2) lost the face."""
  path = str(tmp_path_factory.mktemp('video') / 'moving.avi')
  face = cv2.resize(cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)[20:260, 110:350],
                    (120, 120), interpolation=cv2.INTER_AREA)
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 25, (640, 480))
  for i in range(60):
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[180:300, 20 + 8 * i:140 + 8 * i] = face
    writer.write(frame)
  writer.release()
  return path


@pytest.fixture(scope='module')
def predictor():
  return Predictor.pretrained(tta='flip')


def _decoded(path: str) -> list[np.ndarray]:
  capture, frames = cv2.VideoCapture(path), []
  while True:
    ok, bgr = capture.read()
    if not ok:
      return frames
    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def _iou(a, b) -> float:
  ax, ay, aw, ah = a
  bx, by, bw, bh = b
  inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
  return inter / (aw * ah + bw * bh - inter)


def test_each_frame_row_is_predict_on_that_frame(clip, predictor):
  """search='full' is predict on each frame; the tracked search finds the same box (IoU >= 0.9)
  and the same emotion."""
  rows = list(video.predict_video(predictor, clip, every=1, smooth=1.0, progress=False,
                                  search='full'))
  tracked = list(video.predict_video(predictor, clip, every=1, smooth=1.0, progress=False))
  decoded = _decoded(clip)
  assert [r['frame'] for r in rows] == [r['frame'] for r in tracked] == list(range(8)) == list(
      range(len(decoded)))
  assert {r['track'] for r in rows} == {r['track'] for r in tracked} == {0}  # one person, one track
  for row, fast, frame in zip(rows, tracked, decoded):
    (expected,) = predictor.predict_faces(frame)
    assert tuple(row['box']) == expected.box
    np.testing.assert_allclose(list(row['probabilities'].values()),
                               list(expected.probabilities.values()), atol=1e-5)
    assert _iou(fast['box'], row['box']) >= 0.9 and fast['emotion'] == row['emotion']
  assert rows[-1]['box'][0] - rows[0]['box'][0] > 100  # the face moved; the track followed
  assert rows[3]['time_s'] == pytest.approx(0.3)


def test_smoothing_is_an_exponential_average_along_the_track(clip, predictor):
  raw = list(video.predict_video(predictor, clip, smooth=1.0, progress=False))
  smooth = list(video.predict_video(predictor, clip, smooth=0.5, progress=False))
  expected = np.array(list(raw[0]['probabilities'].values()))
  for r, s in zip(raw, smooth):
    if r['frame']:
      expected = 0.5 * np.array(list(r['probabilities'].values())) + 0.5 * expected
    np.testing.assert_allclose(list(s['probabilities'].values()), expected, atol=1e-5)


def test_cli_samples_every_nth_frame_annotates_and_names_bad_videos(tmp_path, clip):
  (tmp_path / 'broken.mp4').write_bytes(b'not a video at all' * 10)
  blank = cv2.VideoWriter(str(tmp_path / 'blank.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 10, (320, 240))
  for i in range(4):
    blank.write(np.full((240, 320, 3), 60 + 10 * i, np.uint8))
  blank.release()
  out = subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained', '--json',
                        '--every', '3', '--annotate', str(tmp_path / 'annotated.mp4'), clip],
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  assert [r['frame'] for r in rows] == [0, 3, 6] and all(r['emotion'] == 'happy' for r in rows)
  annotated, source = _decoded(str(tmp_path / 'annotated.mp4')), _decoded(clip)
  assert len(annotated) == 3
  for drawn, row in zip(annotated, rows):  # every row's box is drawn, the track's first included
    x, y, w, h = row['box']
    edge = np.abs(drawn[y, x:x + w].astype(int) - source[row['frame']][y, x:x + w]).mean()
    assert edge > 20, (row['frame'], edge)
  out = subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained',
                        str(tmp_path / 'broken.mp4'), str(tmp_path / 'blank.mp4')],
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [
      f'error: {tmp_path / "broken.mp4"} cannot be opened as a video; pass an .mp4 / .avi / .mov '
      'file OpenCV can decode.',
      f'error: {tmp_path / "blank.mp4"}: no face found in any sampled frame (blazeface).']


def test_bad_sampling_and_smoothing_values_are_refused(clip, predictor):
  with pytest.raises(FerJaxError, match=r'--every=0 must be at least 1'):
    list(video.predict_video(predictor, clip, every=0))
  with pytest.raises(FerJaxError, match=r'--smooth=1.5 is out of range'):
    list(video.predict_video(predictor, clip, smooth=1.5))


def _predict_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained', '--tta', 'none',
                         *args], capture_output=True, text=True, cwd=REPO)


def test_a_cut_video_keeps_its_rows_then_fails_in_one_line(tmp_path, moving_avi):
  cut = tmp_path / 'cut.avi'
  data = open(moving_avi, 'rb').read()
  cut.write_bytes(data[:len(data) * 4 // 10])
  decoded = len(_decoded(str(cut)))
  stated = int(cv2.VideoCapture(str(cut)).get(cv2.CAP_PROP_FRAME_COUNT))
  assert (decoded, stated) == (24, 60)  # what OpenCV makes of the first 40 % of the bytes
  out = _predict_cli('--json', '--annotate', str(tmp_path / 'annotated.mp4'), str(cut))
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  assert [r['frame'] for r in rows] == list(range(decoded))  # every decoded frame kept its row
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [f'error: {cut}: decoded 24 of the 60 frames its container states, so the video '
                    'is truncated or damaged and its rows cover only the first 0.96 s of 2.40 s; '
                    're-download or re-encode it to classify the rest.'], out.stderr[-2000:]
  assert len(_decoded(str(tmp_path / 'annotated.mp4'))) == decoded  # written and closed


def test_one_face_keeps_one_track_under_sampling_and_a_whole_video_passes(moving_avi):
  out = _predict_cli('--every', '4', '--json', moving_avi)
  assert out.returncode == 0 and 'frames its container states' not in out.stderr, out.stderr[-2000:]
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  assert [r['frame'] for r in rows] == list(range(0, 60, 4))
  assert {r['track'] for r in rows} == {0}
  assert rows[-1]['box'][0] - rows[0]['box'][0] > 8 * rows[0]['box'][2]  # it crossed the frame


def _ids(tracker: tracking.Tracker, samples: list[tuple[int, list]]) -> list[list[int]]:
  """Track ids of each (frame, boxes) sample's boxes, in their order."""
  return [[t.id for t in tracker.update(boxes, frame)] for frame, boxes in samples]


def test_a_fast_face_sampled_every_4th_frame_keeps_its_track():
  # 12 px a frame: 48 px between samples, 0.6 of its 80 px box (IoU 0.25).
  samples = [(f, [(100 + 12 * f, 200, 80, 80)]) for f in range(0, 80, 4)]
  assert _ids(tracking.Tracker(), samples) == [[0]] * 20


def test_reach_is_0_6_box_sizes_a_frame_from_the_predicted_centre_at_most_2():
  box = lambda x: [(x, 200, 80, 80)]  # noqa: E731
  # 40 px (0.5 box) keeps the id; 40 px a frame is then predicted, and 56 px (0.7) beyond loses it.
  assert _ids(tracking.Tracker(), [(0, box(100)), (1, box(140)), (2, box(236))]) == [[0], [0], [1]]
  # 10 frames later a face may have moved 2 box sizes (not 6), from where it stood or was going.
  assert _ids(tracking.Tracker(), [(0, box(100)), (10, box(260))]) == [[0], [0]]
  assert _ids(tracking.Tracker(), [(0, box(100)), (10, box(270))]) == [[0], [1]]


def test_a_missed_face_keeps_its_track_for_15_frames_not_longer():
  samples = [(f, [(100 + 12 * f, 200, 80, 80)]) for f in (0, 4, 8, 20, 24, 40)]
  # missed at 12 and 16 (12 frames), then at 28, 32 and 36 (16 frames: the track ended)
  assert _ids(tracking.Tracker(), samples) == [[0], [0], [0], [0], [0], [1]]


def test_two_faces_side_by_side_keep_two_tracks():
  samples = []
  for f in range(0, 80, 4):
    left, right = (100 + 12 * f, 200, 80, 80), (190 + 12 * f, 200, 80, 80)  # 10 px apart
    boxes = [left] if f == 40 else [right, left] if f % 8 else [left, right]
    samples.append((f, boxes))
  ids = _ids(tracking.Tracker(), samples)
  for (f, boxes), frame_ids in zip(samples, ids):
    assert frame_ids == [0 if b[0] < 100 + 12 * f + 40 else 1 for b in boxes], (f, frame_ids)


class _FailingCapture:
  """Three frames, then the decoder raises, as OpenCV can on a damaged stream."""

  def __init__(self):
    self.left = 3

  def get(self, prop):
    return 10.0 if prop == cv2.CAP_PROP_FPS else 0.0

  def read(self):
    if not self.left:
      raise cv2.error('broken bitstream')
    self.left -= 1
    return True, np.zeros((8, 8, 3), np.uint8)

  def grab(self):
    return self.read()[0]


def test_a_decoder_error_ends_the_frames_and_is_recorded():
  decoding = video.Decoding()
  assert [i for i, _, _ in video.frames(_FailingCapture(), 2, decoding)] == [0, 2]
  assert decoding.decoded == 3 and 'broken bitstream' in decoding.error
  assert video.shortfall('camera 0', 3, 0, 10.0, decoding.error).startswith(
      'camera 0: decoding failed after 3 frames (')


def test_a_count_off_by_1_frame_or_1_percent_is_no_shortfall():
  assert video.shortfall('a.webm', 59, 60, 30.0) is None
  assert video.shortfall('a.mkv', 990, 1000, 30.0) is None
  assert video.shortfall('a.mpg', 300, 296, 30.0) is None  # MPEG streams' counts are estimates
  assert video.shortfall('camera 0', 500, 0, 30.0) is None  # no count, no error
  assert video.shortfall('a.avi', 58, 60, 30.0).startswith('a.avi: decoded 58 of the 60 frames')
  assert video.shortfall('a.mkv', 989, 1000, 30.0).startswith('a.mkv: decoded 989 of the 1000')


ENTRY, FRAMES = 24, 48  # the frame the small face enters; the clip's length


@pytest.fixture(scope='module')
def entry_clip(tmp_path_factory) -> str:
  """FRAMES frames of 480x320: face A (an ~80 px box, found in the whole frame) walks right and is
  hidden in frames 12-21; face C (as large) flashes in frames 4-5 only; face B (a ~44 px box,
  which only the tiles find) enters at frame ENTRY and stays."""
  path = str(tmp_path_factory.mktemp('video') / 'entry.mp4')
  face = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)[20:260, 110:350]
  big = cv2.resize(face, (200, 200), interpolation=cv2.INTER_AREA)
  small = cv2.resize(face[:, ::-1], (100, 100), interpolation=cv2.INTER_AREA)
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 25, (480, 320))
  for i in range(FRAMES):
    frame = np.full((320, 480, 3), 90, np.uint8)
    if not 12 <= i < 22:
      frame[60:260, 2 * i:200 + 2 * i] = big
    if i in (4, 5):
      frame[0:200, 270:470] = big
    if i >= ENTRY:
      frame[210:310, 370:470] = small
    writer.write(frame)
  writer.release()
  return path


@pytest.fixture(scope='module')
def entry_rows(entry_clip) -> dict[str, list[dict]]:
  predictor = Predictor.pretrained(tta='none')
  return {search: list(video.predict_video(predictor, entry_clip, progress=False, search=search))
          for search in ('track', 'full')}


def _by_track(rows: list[dict]) -> list[list[dict]]:
  by_track: dict[int, list[dict]] = {}
  for row in rows:
    by_track.setdefault(row['track'], []).append(row)
  return sorted(by_track.values(), key=lambda rs: rs[0]['frame'])


@pytest.mark.parametrize('search', ['track', 'full'])
def test_entry_gaps_and_false_tracks(entry_rows, search):
  """A face entering is found within VideoSearch.sweep frames (at once by a full search), and one
  large enough for the whole frame the frame it appears; a face hidden for 10 frames keeps its
  id; one seen in 2 frames (< MIN_HITS) is dropped."""
  tracks = _by_track(entry_rows[search])
  assert len(tracks) == 2, [[r['frame'] for r in rs] for rs in tracks]
  walker, entrant = tracks
  # back in frame 22, where it reappears: the whole-frame pass finds it
  assert [r['frame'] for r in walker] == [f for f in range(FRAMES) if not 12 <= f < 22]
  assert all(r['box'][0] < 260 for r in walker)  # the flash at x >= 270 left no row
  bound = 0 if search == 'full' else fer_faces.VideoSearch(320, 480).sweep
  assert bound == {'full': 0, 'track': 15}[search]
  assert ENTRY <= entrant[0]['frame'] <= ENTRY + bound
  assert [r['frame'] for r in entrant] == list(range(entrant[0]['frame'], FRAMES))


def test_tracked_boxes_and_emotions_are_the_full_searchs(entry_rows):
  """Where both searches report a face, its box overlaps the full search's by IoU >= 0.9 (the
  44 px face too: it is searched in the full search's own tiles) and its emotion is the same."""
  full = {(r['frame'], r['box'][0] > 300): r for r in entry_rows['full']}
  pairs = [(r, full[r['frame'], r['box'][0] > 300]) for r in entry_rows['track']
           if (r['frame'], r['box'][0] > 300) in full]
  assert len(pairs) >= FRAMES - 10 + 10  # the walker's 38 frames and the entrant's after its tile
  for fast, slow in pairs:
    assert _iou(fast['box'], slow['box']) >= 0.9, (fast, slow)
    assert fast['emotion'] == slow['emotion']


def test_a_tracked_face_is_searched_in_the_photo_searchs_tiles():
  search = fer_faces.VideoSearch(480, 640)
  tiles = set(fer_faces._tiles(480, 640))
  # a 45 px box: a quarter (120 px) and a half (240 px) tile, each holding the whole box
  windows = search.windows((300, 200, 45, 45))
  assert [side for _, _, side in windows] == [240, 120] and set(windows) <= tiles
  for x, y, side in windows:
    assert x <= 300 and y <= 200 and 345 <= x + side and 245 <= y + side
  assert search.windows((100, 100, 200, 200)) == [(0, 0, 400)]  # too large for the tiles
  # two faces in one tile share it; the whole frame and one tile of each size complete the frame
  squares = search.squares([(300, 200, 45, 45), (305, 200, 45, 45)])
  assert squares[:3] == [(0, 0, 640)] + windows
  assert len(squares) == len(set(squares)) == 1 + 2 + 2 - len(set(windows) & {(0, 0, 240), (0, 0, 120)})
  assert search.sweep == 70  # 70 quarter tiles at 640x480, one a frame


class _PacedCapture:
  """A file read at 5 frames/s, as a camera delivers them: read() waits for the next frame."""

  def __init__(self, path: str, frames: int):
    self.capture, self.left, self.next = cv2.VideoCapture(path), frames, None

  def read(self):
    self.next = (self.next or time.perf_counter()) + 0.2
    time.sleep(max(self.next - time.perf_counter(), 0))
    self.left -= 1
    return self.capture.read() if self.left >= 0 else (False, None)

  def grab(self):
    return self.read()[0]

  def get(self, prop):
    return 5.0 if prop == cv2.CAP_PROP_FPS else 0.0

  def release(self):
    self.capture.release()


def test_the_camera_path_reads_a_file_standing_in_for_the_device(moving_avi):
  """What --camera N runs (live: newest frame only, classified frame by frame, the window where
  a display exists) on a file read at a camera's pace: one track, and the frames it took have the
  file path's face (the boxes may differ by a few pixels: which tiles and windows a frame gets
  depends on the frames before it) and emotion."""
  predictor = Predictor.pretrained(tta='none')
  live = list(video.predict_video(predictor, _PacedCapture(moving_avi, 30), progress=False,
                                  live=True, smooth=1.0))
  whole = {r['frame']: r for r in video.predict_video(predictor, moving_avi, progress=False,
                                                       smooth=1.0)}
  frames = [r['frame'] for r in live]
  assert frames == sorted(set(frames)) and len(frames) >= 10 and {r['track'] for r in live} == {0}
  for row in live:
    assert _iou(row['box'], whole[row['frame']]['box']) >= 0.5
    assert row['emotion'] == whole[row['frame']]['emotion']
