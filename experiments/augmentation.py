"""Study 2: augmentation ablation: none / flip only / the reference's 11 steps / 11 steps ramped in.

    python -m fer_jax.study experiments/augmentation.py --workdir runs/study_augmentation

Base: configs/study_medium.py (8,192 Training faces, PublicTest, 4 epochs, the configs/best_cpu.py
optimiser). "Progressive" ramps every magnitude from 0 at epoch 1 to full strength at epoch 4.
"""
from configs import study_medium

ALL_STEPS = 'flip,rotate,affine,perspective,contrast,brightness,sharpness,clahe,noise'


def get_config():
  return study_medium.get_config()


def get_study():
  return {'points': [{'augment.steps': ''},
                     {'augment.steps': 'flip'},
                     {'augment.steps': ALL_STEPS},
                     {'augment.steps': ALL_STEPS, 'augment.strength_start': 0.0,
                      'augment.ramp_epochs': 3}],
          'seeds': [0], 'metric': 'best_eval_accuracy'}
