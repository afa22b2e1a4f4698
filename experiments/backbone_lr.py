"""Study 1: the reference's 1e-5 backbone / 1e-3 head versus 1e-3 for both, training from scratch.

    python -m fer_jax.study experiments/backbone_lr.py --workdir runs/study_backbone_lr

Base: configs/study_subset.py (2,048 Training faces, PublicTest, 3 epochs, flips).
"""
from configs import study_subset


def get_config():
  return study_subset.get_config()


def get_study():
  return {'grid': {'backbone_lr': [1e-5, 1e-3]}, 'seeds': [0], 'metric': 'best_eval_accuracy'}
