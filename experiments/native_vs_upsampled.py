"""The reference's size and speed claims for native 48x48 transfer learning, measured.

    python experiments/native_vs_upsampled.py --data ../shared/data/fer2013/fer2013.csv.gz \\
        --out experiments/native_vs_upsampled.md

For the enhanced CNN (configs/enhanced.py), native VGG16 (configs/transfer_vgg16.py) and the
traditional route (configs/upsampled_224_rgb.py: 224x224, grey copied to RGB, VGG16 with its own
classifier): parameters, XLA's memory analysis of the compiled train step, and train-step images/s
on this machine (the reference's 11-step augmentation included, batch --batch_size, one process, one
run). Writes a markdown table with the ratios native / upsampled beside the reference's claims
(97 % fewer parameters, 90 % less memory, 75 % faster training).
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string('data', '', 'A FER2013 CSV whose Training faces to step on; empty = generated.')
flags.DEFINE_integer('batch_size', 32, 'Train-step batch size (the reference trains at 32).')
flags.DEFINE_integer('steps', 6, 'Timed steps for the 48x48 models (after 2 warm-up steps).')
flags.DEFINE_integer('upsampled_steps', 2, 'Timed steps for the 224x224 model (after 1 warm-up).')
flags.DEFINE_string('out', '', 'Where to write the markdown table (also printed).')

ROWS = (('enhanced CNN, 48x48x1', 'enhanced'), ('VGG16, native 48x48x1', 'transfer_vgg16'),
        ('VGG16, upsampled 224x224x3', 'upsampled_224_rgb'))


def measure(config_name: str, images, labels) -> dict[str, float]:
  import importlib
  from fer_jax import bench, models
  config = importlib.import_module(f'configs.{config_name}').get_config()
  runner = bench.FerJaxBench(images, labels, config)
  upsampled = config.model.name == 'vgg16_224_rgb'
  step = runner.train_step(FLAGS.batch_size, FLAGS.upsampled_steps if upsampled else FLAGS.steps,
                           warmup=1 if upsampled else 2)
  return {'params': models.count_params(runner.initial.params), **step}


def table(results: dict[str, dict[str, float]]) -> str:
  native, upsampled = results['transfer_vgg16'], results['upsampled_224_rgb']
  lines = [f'| model | parameters | train-step memory (XLA) | of it, activations and scratch | '
           f'train images/s (batch {FLAGS.batch_size}) |', '|---|---:|---:|---:|---:|']
  for label, key in ROWS:
    r = results[key]
    lines.append(f'| {label} | {r["params"]:,} | {r["total_mb"]:,.0f} MiB | {r["temp_mb"]:,.0f} MiB '
                 f'| {r["images_per_s"]:.1f} |')
  fewer_params = 1 - native['params'] / upsampled['params']
  less_memory = 1 - native['total_mb'] / upsampled['total_mb']
  speedup = native['images_per_s'] / upsampled['images_per_s']
  lines += ['', '| seed\'s claim (native vs upsampled VGG16) | measured |', '|---|---|',
            f'| 97 % fewer parameters | {100 * fewer_params:.1f} % fewer |',
            f'| 90 % less memory | {100 * less_memory:.1f} % less (compiled train step) |',
            f'| 75 % faster training | {speedup:.1f}x the images/s ({100 * (1 - 1 / speedup):.1f} % '
            'less time per face) |']
  return '\n'.join(lines) + '\n'


def main(argv: list[str]) -> None:
  del argv
  from fer_jax import bench, cli
  cli.configure_cpu_backend(True)
  images, labels, description = bench.load_faces(FLAGS.data, FLAGS.batch_size)
  results = {}
  for label, key in ROWS:
    results[key] = measure(key, images, labels)
    print(f'{label}: {results[key]}', flush=True)
  text = f'Faces: {description}.\n\n' + table(results)
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  app.run(main)
