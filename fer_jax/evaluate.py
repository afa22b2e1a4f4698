"""Scores a model on labelled faces, with test-time augmentation.

    python -m fer_jax.evaluate --pretrained --data fer2013.csv.gz --split validation
    python -m fer_jax.evaluate --workdir runs/quick --data faces/ --tta=none,flip,ten_crop

`--data` is a FER2013 CSV (plain or gz, any subset of usages) or an image-folder tree
`<split>/<class>/*.png|jpg`. Prints accuracy, per-class precision / recall / F1, macro-F1 and the
confusion matrix for every TTA variant, and writes `eval_<split>.json` and `confusion_<split>.png`.
"""
import json
import os

from absl import app, flags, logging

from fer_jax import FerJaxError, cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so importing this module defines no global flags."""
  flags.DEFINE_string('workdir', None, 'Training workdir holding checkpoints/; reports go here too.')
  flags.DEFINE_bool('pretrained', False, 'Score the weights that ship with fer_jax; reports go to '
                    '--workdir when given, else ./pretrained_eval.')
  flags.DEFINE_string('checkpoint', 'best', '"best", "latest" or a step number.')
  flags.DEFINE_string('data', None, 'FER2013 CSV (.csv / .csv.gz), arrays file (.npz / .npz.xz) '
                      'or image-folder root.')
  flags.DEFINE_enum('split', None, ['train', 'validation', 'test'],
                    'train (Training), validation (PublicTest) or test (PrivateTest). Default: test '
                    'when the data holds it, else validation.')
  flags.DEFINE_list('tta', ['none', 'flip'], 'Test-time augmentation variants: none, flip, ten_crop.')
  flags.DEFINE_integer('recalibrate_bn', 0, 'Re-measure BatchNorm statistics on this many clean '
                       'Training faces first (fer_jax.batchnorm); 0 = use the checkpoint\'s.')
  flags.DEFINE_string('recalibration_data', None, 'Where those Training faces come from; '
                      'default --data.')
  flags.DEFINE_bool('calibrate', False, 'Fit the temperature of the confidences on this split (it '
                    'must be validation, PublicTest) for the first --tta variant, and store it in '
                    '<workdir>/calibration.json, where predict and Predictor.from_workdir read it.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not (FLAGS.workdir or FLAGS.pretrained) or not FLAGS.data:
    raise app.UsageError('--data and one of --workdir or --pretrained are required.')
  import numpy as np
  from fer_jax import checkpoint, evaluation, plots
  from fer_jax.predictor import Predictor
  evaluation.check_tta(FLAGS.tta)
  out_dir = FLAGS.workdir or 'pretrained_eval'
  split = FLAGS.split or evaluation.default_split(FLAGS.data)
  if FLAGS.calibrate and split != 'validation':
    raise FerJaxError(f'--calibrate fits on validation (PublicTest) faces, not {split}; pass '
                      '--split validation.')
  logging.info('scoring %s of %s with %s; reports go to %s', split, FLAGS.data,
               'the shipped weights' if FLAGS.pretrained else f'{FLAGS.workdir} ({FLAGS.checkpoint})',
               os.path.abspath(out_dir))
  predictor = (Predictor.pretrained() if FLAGS.pretrained else
               Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint))
  faces, labels = evaluation.load_eval_data(FLAGS.data, split, predictor.labels)
  if FLAGS.recalibrate_bn:
    train_faces, _ = evaluation.load_eval_data(FLAGS.recalibration_data or FLAGS.data, 'train')
    predictor.recalibrate_batch_stats(train_faces[:FLAGS.recalibrate_bn])
  if FLAGS.calibrate:
    predictor.temperature = evaluation.fit_temperature(
        evaluation.view_logits(predictor, faces, FLAGS.tta[0]), labels)
    if not FLAGS.pretrained:
      checkpoint.write_temperature(FLAGS.workdir, FLAGS.checkpoint, predictor.temperature,
                                   f'{FLAGS.data} {split}, TTA {FLAGS.tta[0]}')
    logging.info('temperature %.3f fitted on %d %s faces', predictor.temperature, len(faces), split)
  reports = evaluation.evaluate(predictor, faces, labels, FLAGS.tta, progress=True)
  for variant, report in reports.items():
    print(f'== {split}, TTA {variant} ==\n{evaluation.format_report(report, predictor.labels)}\n')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'eval_{split}.json')
  with open(path, 'w') as f:
    json.dump({'data': os.path.abspath(FLAGS.data), 'split': split,
               'checkpoint': 'pretrained' if FLAGS.pretrained else FLAGS.checkpoint,
               'recalibrate_bn': FLAGS.recalibrate_bn,
               'reports': reports}, f, indent=2)
  first = next(iter(reports))
  png = os.path.join(out_dir, f'confusion_{split}.png')
  plots.confusion_matrix(np.array(reports[first]['confusion_matrix']), predictor.labels, png,
                         f'{split}, TTA {first}: accuracy {reports[first]["accuracy"]:.3f}')
  reliability = os.path.join(out_dir, f'reliability_{split}.png')
  report = reports[first]
  plots.reliability_diagram(
      {'temperature 1': (report['ece'], report['reliability']),
       f'temperature {report["temperature"]:.2f}': (report['ece_calibrated'],
                                                     report['reliability_calibrated'])},
      reliability, f'{split}, TTA {first}')
  print(f'wrote {path}, {png} and {reliability}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
