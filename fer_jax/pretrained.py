"""Weights that ship inside the package, so a fresh install can classify faces with no training.

    python -m fer_jax.pretrained --workdir runs/best --checkpoint latest \\
        --data ../shared/data/fer2013/fer2013.csv.gz --recalibrate_bn 4096

exports a checkpoint to `fer_jax/weights/`: `fer2013_cnn48.npz` (parameters and BatchNorm statistics
in float16, '/'-joined names) and `fer2013_cnn48.json` (model config, label map, provenance and
the PublicTest accuracy of the stored half-precision weights, measured here at export).
`load()` returns float32 variables; `Predictor.pretrained()` wraps them.
"""
import json
import os
from typing import Any

from absl import app, flags
import numpy as np

from fer_jax import FerJaxError, cli

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
NAME = 'fer2013_cnn48'
# The slice tests/test_pretrained.py scores: fixed, so the card's number for it can be checked.
CHECK_SLICE = (0, 512)


def paths(directory: str = WEIGHTS_DIR, name: str = NAME) -> tuple[str, str]:
  return os.path.join(directory, f'{name}.npz'), os.path.join(directory, f'{name}.json')


def to_half(variables: dict[str, Any], dtype: str = 'float16') -> dict[str, np.ndarray]:
  import flax
  import jax
  flat = flax.traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  return {name: np.asarray(value).astype(dtype) for name, value in flat.items()}


def from_half(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  import flax
  return flax.traverse_util.unflatten_dict(
      {name: np.asarray(value, np.float32) for name, value in arrays.items()}, sep='/')


def load(directory: str = WEIGHTS_DIR, name: str = NAME) -> tuple[dict[str, Any], dict[str, Any]]:
  """(float32 variables, card) of the shipped model."""
  weights_path, card_path = paths(directory, name)
  if not (os.path.exists(weights_path) and os.path.exists(card_path)):
    raise FerJaxError(f'the pretrained weights {weights_path} (and {os.path.basename(card_path)}) '
                      'are not installed; reinstall fer_jax, or train a model and use --workdir.')
  with np.load(weights_path) as stored:
    variables = from_half(dict(stored))
  with open(card_path) as f:
    card = json.load(f)
  return variables, card


def export(variables: dict[str, Any], card: dict[str, Any], directory: str = WEIGHTS_DIR,
           name: str = NAME) -> str:
  """Writes both files through temporary names, so a failure leaves the old pair intact."""
  os.makedirs(directory, exist_ok=True)
  weights_path, card_path = paths(directory, name)
  np.savez_compressed(weights_path + '.tmp.npz', **to_half(variables, card['dtype']))
  with open(card_path + '.tmp', 'w') as f:
    json.dump(card, f, indent=2)
  os.replace(weights_path + '.tmp.npz', weights_path)
  os.replace(card_path + '.tmp', card_path)
  return weights_path


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
  from fer_jax.predictor import Predictor
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
  # The confidences' temperature, fitted on PublicTest for the default TTA (Predictor.tta).
  ece_before = evaluation.evaluate(predictor, faces, labels, [predictor.tta])[predictor.tta]['ece']
  predictor.temperature = evaluation.fit_temperature(
      evaluation.view_logits(predictor, faces, predictor.tta), labels)
  reports = evaluation.evaluate(predictor, faces, labels, ['none', 'flip', 'ten_crop'], progress=True)
  start, stop = CHECK_SLICE
  slice_report = evaluation.evaluate(predictor, faces[start:stop], labels[start:stop], ['none'])
  run = meta['run']
  card = {'model_config': meta['model_config'], 'label_map': meta['label_map'], 'dtype': FLAGS.dtype,
          'temperature': predictor.temperature,
          'calibration': {'temperature': predictor.temperature, 'tta': predictor.tta,
                          'fitted_on': 'PublicTest, minimising the negative log-likelihood',
                          'ece_before': ece_before,
                          'ece_after': reports[predictor.tta]['ece_calibrated']},
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
