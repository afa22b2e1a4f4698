"""A larger study base than study_subset: 8,192 Training faces, all of PublicTest, 4 epochs.

    python -m fer_jax.study experiments/augmentation.py --workdir runs/study_augmentation

The optimiser of configs/best_cpu.py (Adam, both groups 1e-3, half an epoch of warm-up into a cosine
decay, label smoothing 0.1, dropout_rate 0.3, batch 64), so 512 steps get well past the majority
class; the reference's 11 augmentation steps at their full magnitudes (configs/enhanced.py), switched
per trial by the study. About 11 min per trial on a 2-core CPU.
"""
import ml_collections

from configs import best_cpu, enhanced


def get_config() -> ml_collections.ConfigDict:
  config = best_cpu.get_config()
  config.augment = enhanced.get_config().augment
  config.data.max_train_examples = 8192
  config.num_epochs = 4
  config.warmup_epochs = 0.5
  config.progress_bar = False
  return config
