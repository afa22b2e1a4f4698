"""A confidence temperature per TTA variant for the shipped weights, fitted on PublicTest as the
shipped one was (fer_jax.evaluation.fit_temperature: the temperature minimising the negative
log-likelihood of the labels under the variant's mean calibrated probabilities).

    python experiments/tta_temperatures.py --data ../shared/data/fer2013/fer2013.csv.gz [--write]

Averaging views softens the probabilities, so ten crops, flip and one view each want their own
temperature, not the one fitted for ten crops alone. Prints, per variant, the
accuracy, the fitted temperature and the expected calibration error (15 bins) at temperature 1,
at the single shipped temperature and at the variant's own. `--write` stores the temperatures in
the weights' card (fer_jax/weights/*.json: `temperatures`, and `calibration.by_tta`), which
Predictor.pretrained reads. Only PublicTest is read. ~5 min on a 2-core CPU.
"""
import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, 'FER2013 CSV with PublicTest rows.', required=True)
flags.DEFINE_bool('write', False, 'Store the fitted temperatures in the shipped weights\' card.')


def main(argv: list[str]) -> None:
  del argv
  from fer_jax import evaluation, pretrained
  from fer_jax.predictor import TTA_VARIANTS, Predictor
  predictor = Predictor.pretrained(temperatures={})  # the single shipped temperature, for "before"
  shared = predictor.temperature
  faces, labels = evaluation.load_eval_data(FLAGS.data, 'validation', predictor.labels)
  rows, by_tta = [], {}
  for variant in TTA_VARIANTS:
    logits = evaluation.view_logits(predictor, faces, variant)
    fitted = round(evaluation.fit_temperature(logits, labels), 2)  # as the card stores it
    ece = {t: evaluation.expected_calibration_error(evaluation.calibrated(logits, t), labels)[0]
           for t in (1.0, shared, fitted)}
    accuracy = float((evaluation.calibrated(logits, fitted).argmax(-1) == labels).mean())
    by_tta[variant] = {'temperature': fitted, 'ece_at_1': round(ece[1.0], 4),
                       'ece_before': round(ece[shared], 4), 'ece_after': round(ece[fitted], 4)}
    rows.append(f'| {variant} | {accuracy:.4f} | {fitted:.2f} | {ece[1.0]:.4f} | {ece[shared]:.4f} '
                f'| {ece[fitted]:.4f} |')
  print(f'PublicTest ({len(faces):,} faces), shipped weights; ECE with 15 bins\n\n'
        f'| TTA | accuracy | fitted temperature | ECE at 1 | ECE at {shared} (shipped, fitted for '
        'ten_crop) | ECE at its own |\n|---|---:|---:|---:|---:|---:|\n' + '\n'.join(rows))
  if FLAGS.write:
    path = pretrained.paths()[1]
    with open(path) as f:
      card = json.load(f)
    card['temperatures'] = {variant: figures['temperature'] for variant, figures in by_tta.items()}
    card['calibration']['by_tta'] = {
        **by_tta, 'command': 'python experiments/tta_temperatures.py --data $FER2013_PATH --write'}
    with open(path + '.tmp', 'w') as f:
      json.dump(card, f, indent=2)  # as fer_jax.pretrained.export writes it
    os.replace(path + '.tmp', path)
    print(f'wrote the temperatures into {path}')


if __name__ == '__main__':
  app.run(main)
