"""The base of the first studies (experiments/): the reference's recipe sized for a 2-core CPU.

The first 2,048 Training faces, all 3,589 PublicTest faces, 3 epochs, flips only, both groups at
1e-3, no early stopping; BatchNorm statistics re-measured on the 2,048 faces after each epoch
(fer_jax/batchnorm.py). About 1 min per epoch on a 2-core CPU when nothing else runs.
"""
import ml_collections

from configs import enhanced


def get_config() -> ml_collections.ConfigDict:
  config = enhanced.get_config()
  config.data.max_train_examples = 2048
  config.num_epochs = 3
  config.backbone_lr = 1e-3
  config.augment.steps = 'flip'
  config.early_stopping_patience = 0
  config.progress_bar = False
  return config
