"""Writes the sample inputs that ship in fer_jax/samples/ from scikit-image's astronaut photo.

    pip install "fer_jax[test]"        # scikit-image, whose data holds the photo
    python experiments/make_samples.py [--out fer_jax/samples]

astronaut.jpg: the photo (NASA portrait of Eileen Collins, public domain; skimage.data.astronaut)
at 320x320, JPEG quality 85. astronaut_clip.mp4: 4 s at 10 frames/s, 320x240, the photo's head
gliding across a plain grey frame while it grows, written by OpenCV (MPEG-4 Part 2, `mp4v`). Both
are the same bytes on every run with the same scikit-image, Pillow and OpenCV (no randomness).
"""
import argparse
import os

import cv2
import numpy as np
from PIL import Image

PHOTO_SIDE = 320
CLIP_SIZE = (320, 240)  # width, height
CLIP_FPS, CLIP_SECONDS = 10, 4
HEAD = (40, 0, 300, 260)  # x0, y0, x1, y1 of the astronaut's head and shoulders in the 512 px photo


def photo() -> Image.Image:
  from skimage import data
  return Image.fromarray(data.astronaut())


def clip_frames(rgb: np.ndarray) -> list[np.ndarray]:
  """The head, scaled from 100 to 150 px wide, moving left to right on a grey frame (BGR)."""
  x0, y0, x1, y1 = HEAD
  head = rgb[y0:y1, x0:x1]
  width, height = CLIP_SIZE
  count = CLIP_FPS * CLIP_SECONDS
  frames = []
  for i in range(count):
    t = i / (count - 1)
    side = int(round(100 + 50 * t))
    patch = cv2.resize(head, (side, int(round(side * head.shape[0] / head.shape[1]))),
                       interpolation=cv2.INTER_AREA)
    frame = np.full((height, width, 3), 128, np.uint8)
    x = int(round(10 + t * (width - side - 20)))
    y = (height - patch.shape[0]) // 2
    frame[y:y + patch.shape[0], x:x + side] = patch
    frames.append(np.ascontiguousarray(frame[..., ::-1]))
  return frames


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'fer_jax',
                                                    'samples'))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  image = photo()
  photo_path = os.path.join(args.out, 'astronaut.jpg')
  image.resize((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.LANCZOS).save(photo_path, quality=85)
  clip_path = os.path.join(args.out, 'astronaut_clip.mp4')
  writer = cv2.VideoWriter(clip_path, cv2.VideoWriter_fourcc(*'mp4v'), CLIP_FPS, CLIP_SIZE)
  for frame in clip_frames(np.asarray(image)):
    writer.write(frame)
  writer.release()
  for path in (photo_path, clip_path):
    print(f'wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)')


if __name__ == '__main__':
  main()
