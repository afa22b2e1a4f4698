"""Scores a model on labelled faces, with test-time augmentation.

    python -m fer_jax.evaluate --pretrained --data fer2013.csv.gz --split validation
    python -m fer_jax.evaluate --workdir runs/quick --data faces/ --tta=none,flip,ten_crop
    python -m fer_jax.evaluate --pretrained --data A --data B --data C    # one table of them all

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
  flags.DEFINE_multi_string('data', None, 'FER2013 CSV (.csv / .csv.gz), arrays file (.npz / '
                            '.npz.xz) or image-folder root; several: one table of them all.')
  flags.DEFINE_enum('split', None, ['train', 'validation', 'test'],
                    'train (Training), validation (PublicTest) or test (PrivateTest). Default: test '
                    'when the data holds it, else validation.')
  flags.DEFINE_list('tta', ['none', 'flip'], 'Test-time augmentation variants: none, flip, ten_crop.')
  flags.DEFINE_integer('recalibrate_bn', 0, 'Re-measure BatchNorm statistics on this many clean '
                       'Training faces first (fer_jax.batchnorm); 0 = use the checkpoint\'s.')
  flags.DEFINE_string('recalibration_data', None, 'Where those Training faces come from; '
                      'default --data.')
  flags.DEFINE_bool('calibrate', False, 'Fit the temperature of the confidences on this split (it '
                    'must be validation, PublicTest) for each --tta variant, report each variant '
                    'at its own, and store the first variant\'s in <workdir>/calibration.json, '
                    'where predict and Predictor.from_workdir read it.')
  flags.DEFINE_integer('explain', 0, 'Also draw the mean Grad-CAM map per true class and per most '
                       'common confusion over the first N faces (fer_jax.explain), into '
                       'explain_<split>.png; 0 = none.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not (FLAGS.workdir or FLAGS.pretrained) or not FLAGS.data:
    raise app.UsageError('--data and one of --workdir or --pretrained are required.')
  from fer_jax import evaluation
  from fer_jax.predictor import Predictor
  evaluation.check_tta(FLAGS.tta)
  if FLAGS.explain and (FLAGS.explain < 0 or len(FLAGS.data) > 1):
    raise FerJaxError(f'--explain={FLAGS.explain} draws N > 0 faces of one dataset; pass a '
                      'positive count and a single --data.')
  if FLAGS.calibrate and len(FLAGS.data) > 1:
    raise FerJaxError('--calibrate fits on one dataset; pass a single --data.')
  out_dir = FLAGS.workdir or 'pretrained_eval'
  cli.prepare_folder(out_dir, '--workdir')  # before any work
  predictor = (Predictor.pretrained() if FLAGS.pretrained else
               Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint))
  if FLAGS.recalibrate_bn:
    train_faces, _ = evaluation.load_eval_data(FLAGS.recalibration_data or FLAGS.data[0], 'train')
    predictor.recalibrate_batch_stats(train_faces[:FLAGS.recalibrate_bn])
  if len(FLAGS.data) == 1:
    _one_dataset(predictor, FLAGS.data[0], out_dir)
  else:
    _table(predictor, FLAGS.data, out_dir)


def _scored(predictor, data: str) -> tuple[str, int, dict]:
  from fer_jax import evaluation
  split = FLAGS.split or evaluation.default_split(data)
  logging.info('scoring %s of %s with %s', split, data,
               'the shipped weights' if FLAGS.pretrained else f'{FLAGS.workdir} ({FLAGS.checkpoint})')
  faces, labels = evaluation.load_eval_data(data, split, predictor.labels)
  return split, len(faces), evaluation.evaluate(predictor, faces, labels, FLAGS.tta, progress=True)


def _table(predictor, datasets: list[str], out_dir: str) -> None:
  """One row per dataset: accuracy, macro-F1 and mean class recall for every TTA variant."""
  rows = []
  for data in datasets:
    split, count, reports = _scored(predictor, data)
    rows.append({'data': data, 'split': split, 'faces': count,
                 **{f'{metric} ({variant})': reports[variant][metric] for variant in FLAGS.tta
                    for metric in ('accuracy', 'macro_f1', 'mean_recall')}})
  columns = [c for c in rows[0] if c not in ('data', 'split', 'faces')]
  lines = ['| data | split | faces | ' + ' | '.join(columns) + ' |',
           '|---|---|---:|' + '---:|' * len(columns)]
  lines += [f'| {r["data"]} | {r["split"]} | {r["faces"]} | '
            + ' | '.join(f'{r[c]:.4f}' for c in columns) + ' |' for r in rows]
  table = '\n'.join(lines)
  print(table)
  with open(os.path.join(out_dir, 'eval_table.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(out_dir, 'eval_table.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  print(f'wrote {os.path.join(out_dir, "eval_table.md")} and eval_table.json')


def _one_dataset(predictor, data: str, out_dir: str) -> None:
  """Every TTA variant's full report, the confusion matrix and the reliability diagram."""
  import numpy as np
  from fer_jax import checkpoint, evaluation, plots
  split = FLAGS.split or evaluation.default_split(data)
  if FLAGS.calibrate:
    if split != 'validation':
      raise FerJaxError(f'--calibrate fits on validation (PublicTest) faces, not {split}; pass '
                        '--split validation.')
    faces, labels = evaluation.load_eval_data(data, split, predictor.labels)
    # One temperature per TTA variant scored (averaging views softens the probabilities); a
    # workdir stores them all, and the first variant's for the variants not scored.
    predictor.temperatures = {variant: evaluation.fit_temperature(
        evaluation.view_logits(predictor, faces, variant), labels) for variant in FLAGS.tta}
    predictor.temperature = predictor.temperatures[FLAGS.tta[0]]
    if not FLAGS.pretrained:
      checkpoint.write_temperature(FLAGS.workdir, FLAGS.checkpoint, predictor.temperature,
                                   f'{data} {split}, TTA {", ".join(FLAGS.tta)}',
                                   predictor.temperatures)
    logging.info('temperatures %s fitted on %d %s faces', predictor.temperatures, len(faces), split)
  split, _, reports = _scored(predictor, data)
  for variant, report in reports.items():
    print(f'== {split}, TTA {variant} ==\n{evaluation.format_report(report, predictor.labels)}\n')
  path = os.path.join(out_dir, f'eval_{split}.json')
  with open(path, 'w') as f:
    json.dump({'data': os.path.abspath(data), 'split': split,
               'checkpoint': 'pretrained' if FLAGS.pretrained else FLAGS.checkpoint,
               'recalibrate_bn': FLAGS.recalibrate_bn, 'reports': reports}, f, indent=2)
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
  if FLAGS.explain > 0:
    from fer_jax import explain_figures
    faces, labels = evaluation.load_eval_data(data, split, predictor.labels)
    figure = os.path.join(out_dir, f'explain_{split}.png')
    explain_figures.explain_split(predictor, faces, labels, FLAGS.explain, first, figure,
                                  f'{split}: mean Grad-CAM over the first '
                                  f'{min(FLAGS.explain, len(faces))} faces, TTA {first}')
    print(f'wrote {figure}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
