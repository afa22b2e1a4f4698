"""Video: a clip the test writes itself (the astronaut moving across a grey frame), read frame by
frame; each sampled frame's row is what predict gives for that frame, one track follows the face,
smoothing follows its recurrence, and bad videos are one line each."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage import data as skimage_data

from fer_jax import FerJaxError, video
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
def predictor():
  return Predictor.pretrained(tta='flip')


def _decoded(path: str) -> list[np.ndarray]:
  capture, frames = cv2.VideoCapture(path), []
  while True:
    ok, bgr = capture.read()
    if not ok:
      return frames
    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_each_frame_row_is_predict_on_that_frame(clip, predictor):
  rows = list(video.predict_video(predictor, clip, every=1, smooth=1.0, progress=False))
  decoded = _decoded(clip)
  assert [r['frame'] for r in rows] == list(range(8)) == list(range(len(decoded)))
  assert {r['track'] for r in rows} == {0}  # one person, one track
  for row, frame in zip(rows, decoded):
    (expected,) = predictor.predict_faces(frame)
    assert tuple(row['box']) == expected.box
    np.testing.assert_allclose(list(row['probabilities'].values()),
                               list(expected.probabilities.values()), atol=1e-5)
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
  assert len(_decoded(str(tmp_path / 'annotated.mp4'))) == 3
  out = subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained',
                        str(tmp_path / 'broken.mp4'), str(tmp_path / 'blank.mp4')],
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [
      f'error: {tmp_path / "broken.mp4"} cannot be opened as a video; pass an .mp4 / .avi / .mov '
      'file OpenCV can decode, or another --camera index.',
      f'error: {tmp_path / "blank.mp4"}: no face found in any sampled frame (blazeface).']


def test_bad_sampling_and_smoothing_values_are_refused(clip, predictor):
  with pytest.raises(FerJaxError, match=r'--every=0 must be at least 1'):
    list(video.predict_video(predictor, clip, every=0))
  with pytest.raises(FerJaxError, match=r'--smooth=1.5 is out of range'):
    list(video.predict_video(predictor, clip, smooth=1.5))
