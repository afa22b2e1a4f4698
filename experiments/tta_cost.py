"""Milliseconds to classify one face with each test-time augmentation variant (shipped weights).

    python experiments/tta_cost.py --calls 50

One 48x48 face per call through Predictor.probabilities (views batched in one compiled call);
median and 90th percentile over the calls, after two warm-up calls.
"""
import time

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_integer('calls', 50, 'Timed calls per variant.')


def main(argv: list[str]) -> None:
  del argv
  from fer_jax import cli
  cli.configure_cpu_backend()
  from fer_jax.predictor import TTA_VARIANTS, Predictor
  predictor = Predictor.pretrained()
  face = np.random.default_rng(0).integers(0, 256, (1, 48, 48, 1), dtype=np.uint8)
  print('| TTA | views | ms per face (median) | 90th percentile |')
  print('|---|---:|---:|---:|')
  for variant in TTA_VARIANTS:
    for _ in range(2):
      predictor.probabilities(face, variant)
    times = []
    for _ in range(FLAGS.calls):
      start = time.perf_counter()
      predictor.probabilities(face, variant)
      times.append(1000 * (time.perf_counter() - start))
    views = len(TTA_VARIANTS[variant](face))
    print(f'| {variant} | {views} | {np.median(times):.1f} | {np.percentile(times, 90):.1f} |')


if __name__ == '__main__':
  app.run(main)
