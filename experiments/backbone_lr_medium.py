"""Study 1 again on the larger base: the reference's 1e-5 backbone / 1e-3 head vs 1e-3 for both.

    python -m fer_jax.study experiments/backbone_lr_medium.py --workdir runs/study_backbone_lr_medium

Base: configs/study_medium.py (8,192 Training faces, PublicTest, 4 epochs, the configs/best_cpu.py
optimiser), with the flips-only augmentation so that 512 steps leave the majority class.
"""
from configs import study_medium


def get_config():
  config = study_medium.get_config()
  config.augment.steps = 'flip'
  return config


def get_study():
  return {'grid': {'backbone_lr': [1e-5, 1e-3]}, 'seeds': [0], 'metric': 'best_eval_accuracy'}
