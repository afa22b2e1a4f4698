"""Study 3: dropout_rate 0.3 / 0.5 (the reference) / 0.7, scaling every dropout layer's rate.

    python -m fer_jax.study experiments/dropout.py --workdir runs/study_dropout

Base: configs/study_subset.py (2,048 Training faces, PublicTest, 3 epochs, flips, both at 1e-3).
"""
from configs import study_subset


def get_config():
  return study_subset.get_config()


def get_study():
  return {'grid': {'model.dropout_rate': [0.3, 0.5, 0.7]}, 'seeds': [0],
          'metric': 'best_eval_accuracy'}
