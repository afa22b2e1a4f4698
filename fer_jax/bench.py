"""Throughput of the train step and of inference, beside the seed's PyTorch step in the same run.

    python -m fer_jax.bench --batch_sizes=64 --torch_reference=../shared/bench/torch_reference.py

Prints a markdown table of images/s (and the fer_jax / PyTorch ratio when PyTorch is installed) and
writes the same as JSON. Absolute figures move 10-15 % between runs on a shared CPU; compare the
ratios from one run.
"""
import functools
import json
import os
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so importing this module has no side effects."""
  flags.DEFINE_list('batch_sizes', ['64'], 'Batch sizes to time.')
  flags.DEFINE_integer('steps', 15, 'Timed steps per measurement (after 3 warm-up steps).')
  flags.DEFINE_string('torch_reference', '', 'Path of torch_reference.py; empty = skip PyTorch.')
  flags.DEFINE_string('json_out', '', 'Where to write the figures as JSON (default: print only).')
  flags.DEFINE_bool('fast_cpu', True, 'Use the YNNPACK-for-dots-only XLA flag (fer_jax.parallel).')


def _images_per_second(fn, batch_size: int, steps: int) -> float:
  import jax
  for _ in range(3):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(fn())
  return steps * batch_size / (time.perf_counter() - start)


def bench_fer_jax(batch_size: int, steps: int) -> dict[str, float]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import enhanced
  from fer_jax import augment, models, optim, train

  config = enhanced.get_config()
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fns(config, 100))
  holder = {'state': train.create_train_state(jax.random.PRNGKey(0), model, tx)}
  rng = np.random.default_rng(0)
  batch = jax.device_put({'image': rng.integers(0, 256, (batch_size, 48, 48, 1), dtype=np.uint8),
                          'label': rng.integers(0, 7, batch_size).astype(np.int32)})
  step = jax.jit(functools.partial(train.train_step,
                                   augment_fn=augment.make_train_augment(config.augment, 100)),
                 donate_argnums=0)

  def train_once():
    holder['state'], sums = step(holder['state'], batch)
    return sums
  train_ips = _images_per_second(train_once, batch_size, steps)
  state = holder['state']
  infer = jax.jit(lambda variables, images: model.apply(variables, augment.normalize(images)))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  infer_ips = _images_per_second(lambda: infer(variables, batch['image']), batch_size, steps)
  augment_fn = jax.jit(augment.make_train_augment(config.augment, 100))
  keys = iter(range(1_000_000))
  augment_ips = _images_per_second(
      lambda: augment_fn(batch['image'], jax.random.key(next(keys)), jnp.int32(0)), batch_size, steps)
  # The Predictor as a user calls it: host arrays in, probabilities out, compiled once.
  from fer_jax.predict import Predictor
  predictor = Predictor(config.model.to_dict(), jax.device_get(variables), batch_size=batch_size)
  faces = np.asarray(batch['image'])
  predictor.probabilities(faces[:1])
  start, repeats = time.perf_counter(), 3 * steps
  for i in range(repeats):
    predictor.probabilities(faces[i % batch_size:i % batch_size + 1])
  single_ms = (time.perf_counter() - start) / repeats * 1000
  predictor_ips = _images_per_second(lambda: predictor.probabilities(faces), batch_size, steps)
  return {'train_images_per_s': train_ips, 'eval_images_per_s': infer_ips,
          'augment_images_per_s': augment_ips, 'predictor_images_per_s': predictor_ips,
          'predictor_single_image_ms': single_ms}


def bench_torch(script: str, batch_size: int, steps: int) -> dict[str, float] | None:
  try:
    import torch  # noqa: F401
  except ImportError:
    return None
  script = os.path.abspath(script)
  out = subprocess.run([sys.executable, script, '--batch-size', str(batch_size), '--steps',
                        str(steps)], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.abspath(script)))
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
  del argv
  from fer_jax import parallel
  parallel.configure_cpu_backend(FLAGS.fast_cpu)
  import jax
  rows = []
  for batch_size in map(int, FLAGS.batch_sizes):
    figures = {'batch_size': batch_size, 'jax': jax.__version__,
               'xla_flags': os.environ.get('XLA_FLAGS', ''), 'fer_jax': bench_fer_jax(batch_size, FLAGS.steps)}
    if FLAGS.torch_reference:
      figures['pytorch'] = bench_torch(FLAGS.torch_reference, batch_size, FLAGS.steps)
    rows.append(figures)
  print('| batch | measurement | fer_jax img/s | PyTorch img/s | ratio |')
  print('|---:|---|---:|---:|---:|')
  for figures in rows:
    for key, name in (('train_images_per_s', 'train step'), ('eval_images_per_s', 'inference')):
      ours = figures['fer_jax'][key]
      theirs = (figures.get('pytorch') or {}).get(key)
      ratio = f'{ours / theirs:.2f}x' if theirs else 'n/a'
      print(f"| {figures['batch_size']} | {name} | {ours:.1f} | {theirs if theirs else 'n/a'} | {ratio} |")
  for figures in rows:
    ours = figures['fer_jax']
    print(f"batch {figures['batch_size']}: augmentation (11 steps) {ours['augment_images_per_s']:.0f} "
          f"img/s = {ours['augment_images_per_s'] / ours['train_images_per_s']:.1f}x the train step; "
          f"Predictor {ours['predictor_images_per_s']:.0f} img/s batched, "
          f"{ours['predictor_single_image_ms']:.1f} ms for one face")
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  define_flags()
  app.run(main)
