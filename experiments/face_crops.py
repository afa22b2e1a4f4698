"""How a detector's box sits in a FER2013 crop: the numbers fer_jax.faces frames its crops with.

    python experiments/face_crops.py --data $FER2013_PATH --faces 2048

Each Training face is enlarged to 192 px (bilinear) and put in the middle of a 384-px grey canvas;
the detector runs on the canvas. For each face found, the box side over the face's side and the box
centre's height within the face are recorded; the medians are what `faces.FRAMING` holds.
Also prints how many faces each detector finds.
"""
import sys

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, 'FER2013 CSV with Training rows.', required=True)
flags.DEFINE_integer('faces', 2048, 'Training faces to measure.')


def main(argv: list[str]) -> None:
  del argv
  from PIL import Image
  from fer_jax import faces as fer_faces
  from fer_jax.data.csv import read_fer2013_csv
  train_faces, _ = read_fer2013_csv(FLAGS.data)['Training']
  for detector in fer_faces.DETECTORS:
    shares, centres, found = [], [], 0
    for face in train_faces[:FLAGS.faces, ..., 0]:
      big = np.asarray(Image.fromarray(face).resize((192, 192), Image.Resampling.BILINEAR))
      canvas = np.full((384, 384), 128, np.uint8)
      canvas[96:288, 96:288] = big
      detections = fer_faces.detect_faces(np.repeat(canvas[..., None], 3, -1), detector)
      inside = [d for d in detections if 96 <= d.box[0] + d.box[2] / 2 <= 288
                and 96 <= d.box[1] + d.box[3] / 2 <= 288]
      if not inside:
        continue
      found += 1
      x, y, w, h = inside[0].box
      shares.append(max(w, h) / 192)
      centres.append((y + h / 2 - 96) / 192)
    print(f'{detector}: found {found}/{FLAGS.faces}; box side / face side: median '
          f'{np.median(shares):.3f}; box centre height: median {np.median(centres):.3f}')
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
