"""The camera path of two versions of fer_jax side by side: how many of the frames a 30 frames/s
camera gives each one analyses.

    PYTHONPATH=/path/to/other/checkout python experiments/camera_before_after.py before
    PYTHONPATH=$PWD python experiments/camera_before_after.py after

Runs `predict_video(..., live=True)` (what `predict --camera N` runs: the newest frame only,
classified frame by frame) on 150 in-memory 640x480 frames of the video benchmark's clips
(fer_jax.video_bench.make_frame: one face or three), given at 30 frames/s, with `--tta none` and
`flip`, and prints the distinct frames that got rows. A frame the search and classifier are not
ready for when the next arrives is skipped. The camera here is a stand-in of its own (not
video_bench.SyntheticCapture) so that versions without a paced capture can be measured too.
Alternate the two versions' runs: the figures move with the machine's load.
"""
import json
import sys
import time

import numpy as np

from fer_jax import video, video_bench
from fer_jax.predictor import Predictor


class PacedFrames:
  """A cv2.VideoCapture stand-in giving `frames` prepared frames at `pace` frames/s."""

  def __init__(self, shape: tuple[int, int], count: int, frames: int, pace: float = 30.0):
    faces = video_bench._faces()
    self.made = [video_bench.make_frame(i, shape, count, faces) for i in range(frames)]
    self.index, self.pace, self.start = 0, pace, 0.0

  def read(self) -> tuple[bool, np.ndarray | None]:
    if self.index >= len(self.made):
      return False, None
    self.start = self.start or time.perf_counter()
    time.sleep(max(self.start + self.index / self.pace - time.perf_counter(), 0))
    self.index += 1
    return True, self.made[self.index - 1]

  def grab(self) -> bool:
    return self.read()[0]

  def get(self, prop: int) -> float:
    return 30.0 if prop == 5 else 0.0  # cv2.CAP_PROP_FPS; no frame count, as a camera

  def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
    return True

  def release(self) -> None:
    pass


def main() -> None:
  analysed = {}
  for tta in ('none', 'flip'):
    predictor = Predictor.pretrained(tta=tta)
    for count in (1, 3):
      rows = video.predict_video(predictor, PacedFrames((480, 640), count, 150), progress=False,
                                 live=True, show=False)
      analysed[f'{count} face{"s" if count > 1 else ""}, {tta}'] = len({r['frame'] for r in rows})
  print(sys.argv[1] if len(sys.argv) > 1 else '', json.dumps(analysed), 'of 150 frames each',
        flush=True)


if __name__ == '__main__':
  main()
