"""Fine-tuning vs training from scratch on a small 3-class image-folder set cut from FER2013.

    python experiments/finetune_3class.py --data $FER2013_PATH --out runs/finetune_3class --per_class 300

Writes <out>/faces/{train,validation}/{happy,sad,neutral}/*.png: the first --per_class Training
faces of each class for train, the first --per_class PublicTest faces for validation; then trains
configs/finetune.py twice on it, from the shipped weights and from random weights (backbone 1e-3,
no frozen epoch), and prints the validation accuracy per epoch of both. The shipped weights were
trained on all FER2013 Training faces and chosen on PublicTest, so the fine-tuned row is an upper
bound for data they have not seen.
"""
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, 'FER2013 CSV with Training and PublicTest rows.', required=True)
flags.DEFINE_string('out', 'runs/finetune_3class', 'Where the faces and the two runs go.')
flags.DEFINE_integer('per_class', 300, 'Faces per class and split.')
flags.DEFINE_integer('epochs', 10, 'Epochs of each run.')
CLASSES = ('happy', 'sad', 'neutral')


def main(argv: list[str]) -> None:
  del argv
  import json
  import numpy as np
  from PIL import Image
  from fer_jax import EMOTIONS
  from fer_jax.data.csv import read_fer2013_csv
  by_usage = read_fer2013_csv(FLAGS.data)
  root = os.path.join(FLAGS.out, 'faces')
  for split, usage in (('train', 'Training'), ('validation', 'PublicTest')):
    faces, labels = by_usage[usage]
    for name in CLASSES:
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in np.nonzero(labels == EMOTIONS.index(name))[0][:FLAGS.per_class]:
        Image.fromarray(faces[i, ..., 0]).save(os.path.join(folder, f'{usage}_{i}.png'))
  runs = {'fine-tuned from the shipped weights': [],
          'from scratch': ['--config.init_from=', '--config.backbone_lr=1e-3',
                           '--config.freeze_backbone_epochs=0']}
  table = {}
  for name, overrides in runs.items():
    workdir = os.path.join(FLAGS.out, 'scratch' if overrides else 'finetuned')
    subprocess.run([sys.executable, '-m', 'fer_jax.main', '--config', 'configs/finetune.py',
                    '--workdir', workdir, f'--config.data.images_path={root}',
                    f'--config.num_epochs={FLAGS.epochs}'] + overrides, check=True)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      table[name] = [json.loads(line)['eval_accuracy'] for line in f]
  print(f'| validation accuracy ({FLAGS.per_class} faces per class) | '
        + ' | '.join(str(e) for e in range(1, FLAGS.epochs + 1)) + ' |')
  print('|---|' + '---:|' * FLAGS.epochs)
  for name, accuracies in table.items():
    print(f'| {name} | ' + ' | '.join(f'{100 * a:.1f}' for a in accuracies) + ' |')


if __name__ == '__main__':
  app.run(main)
