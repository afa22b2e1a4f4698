"""Three fields of configs/best.py's bundle, one at a time, on the medium base: random erasing,
the weight EMA, and label smoothing taken away.

    python -m fer_jax.study experiments/regularizers_medium.py --workdir runs/study_regularizers_medium

Base: configs/study_medium.py with flips only (8,192 Training faces, PublicTest, 4 epochs, the
configs/best_cpu.py optimiser with label smoothing 0.1): the same config and seed as study 2's flip
trial and study 1's 1e-3 trial (38.45 %), which is this study's baseline row.
"""
from configs import study_medium


def get_config():
  config = study_medium.get_config()
  config.augment.steps = 'flip'
  return config


def get_study():
  return {'points': [{'random_erasing': 0.5}, {'ema_decay': 0.999}, {'label_smoothing': 0.0}],
          'seeds': [0], 'metric': 'best_eval_accuracy'}
