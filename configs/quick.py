"""A usable model on a CPU in under half an hour: the reference model, 5 epochs of full FER2013.

    python -m fer_jax.main --config configs/quick.py --workdir runs/quick

Both parameter groups at 1e-3 (a randomly initialised backbone needs it; configs/enhanced.py's
1e-5 suits pretrained backbones), Adam with a short warm-up into a cosine decay to zero over the
5 epochs, label smoothing 0.1, dropout_rate 0.3, light geometric augmentation (flip, +-10 deg
rotation, small shifts / zooms / shear), batch 64. On a 2-core CPU: 53.16 % PublicTest after
25 minutes (docs/training.md).
"""
import ml_collections

from configs import best_cpu


def get_config() -> ml_collections.ConfigDict:
  config = best_cpu.get_config()
  config.num_epochs = 5
  config.warmup_epochs = 0.25
  return config
