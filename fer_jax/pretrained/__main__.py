"""Exports a checkpoint as the weights that ship in the package, with its card.

    python -m fer_jax.pretrained --workdir runs/best --checkpoint latest \\
        --data $FER2013_PATH --recalibrate_bn 4096

Measures the half-precision weights on PublicTest (and the check slice tests/test_pretrained.py
reads) and fits their confidence temperature there (fer_jax.evaluation.fit_temperature).
"""
import os

from absl import app, flags

from fer_jax import FerJaxError, cli
from fer_jax.pretrained import CHECK_SLICE, WEIGHTS_DIR, export, from_half, to_half

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Training workdir holding checkpoints/.')
  flags.DEFINE_string('checkpoint', 'best', '"best", "latest" or a step number.')
  flags.DEFINE_string('data', None, 'FER2013 CSV with Training and PublicTest rows.')
  flags.DEFINE_integer('recalibrate_bn', 4096, 'Clean Training faces to re-measure BatchNorm on.')
  flags.DEFINE_string('out', WEIGHTS_DIR, 'Where to write the weights and card.')
  flags.DEFINE_string('dtype', 'float16', 'Stored precision: float16 or bfloat16.')
  flags.DEFINE_string('recipe', '', 'How the checkpoint was trained (goes into the card).')


def main(argv: list[str]) -> None:
  if len(argv) > 1 or not FLAGS.workdir or not FLAGS.data:
    raise app.UsageError('usage: python -m fer_jax.pretrained --workdir W --data CSV [--checkpoint]')
  if FLAGS.dtype not in ('float16', 'bfloat16'):
    raise FerJaxError(f'--dtype={FLAGS.dtype} is not stored; use float16 or bfloat16.')
  import jax
  from fer_jax import evaluation
  from fer_jax.checkpoint import load_for_inference
  from fer_jax.predictor import TTA_VARIANTS, Predictor
  variables, meta = load_for_inference(FLAGS.workdir, FLAGS.checkpoint)
  predictor = Predictor(meta['model_config'], variables, meta['label_map'])
  train_faces, _ = evaluation.load_eval_data(FLAGS.data, 'train')
  faces, labels = evaluation.load_eval_data(FLAGS.data, 'validation')
  if FLAGS.recalibrate_bn:
    predictor.recalibrate_batch_stats(train_faces[:FLAGS.recalibrate_bn])
  # Score what ships: the weights after the round trip through half precision.
  if FLAGS.dtype == 'bfloat16':
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy; a jax dependency)
  predictor.variables = jax.device_put(from_half(to_half(predictor.variables, FLAGS.dtype)))
  # The confidences' temperatures, fitted on PublicTest's crops, one per TTA variant; the crops'
  # default variant's is also the temperature of any other.
  tta = predictor.tta_for(detected=False)
  ece_before = evaluation.evaluate(predictor, faces, labels, [tta])[tta]['ece']
  predictor.temperatures = {variant: evaluation.fit_temperature(
      evaluation.view_logits(predictor, faces, variant), labels) for variant in TTA_VARIANTS}
  predictor.temperature = predictor.temperatures[tta]
  reports = evaluation.evaluate(predictor, faces, labels, list(TTA_VARIANTS), progress=True)
  start, stop = CHECK_SLICE
  slice_report = evaluation.evaluate(predictor, faces[start:stop], labels[start:stop], ['none'])
  run = meta['run']
  card = {'model_config': meta['model_config'], 'label_map': meta['label_map'], 'dtype': FLAGS.dtype,
          'temperature': predictor.temperature, 'temperatures': predictor.temperatures,
          'calibration': {'temperature': predictor.temperature, 'tta': tta,
                          'fitted_on': 'PublicTest, minimising the negative log-likelihood',
                          'ece_before': ece_before,
                          'ece_after': reports[tta]['ece_calibrated']},
          'source': {'workdir': FLAGS.workdir, 'checkpoint': FLAGS.checkpoint, 'epoch': run['epoch'],
                     'recipe': FLAGS.recipe, 'recalibrate_bn': FLAGS.recalibrate_bn,
                     'history': run['history']},
          'publictest': {variant: {'accuracy': r['accuracy'], 'macro_f1': r['macro_f1'],
                                   'recall': {k: v['recall'] for k, v in r['per_class'].items()}}
                         for variant, r in reports.items()},
          'check_slice': {'rows': list(CHECK_SLICE), 'split': 'validation',
                          'correct': slice_report['none']['correct'],
                          'accuracy': slice_report['none']['accuracy']}}
  path = export(predictor.variables, card, FLAGS.out)
  size = os.path.getsize(path) / 2**20
  print(f'wrote {path} ({size:.1f} MiB) and its card; PublicTest accuracy ' +
        ', '.join(f'{v} {r["accuracy"]:.4f}' for v, r in reports.items()))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
