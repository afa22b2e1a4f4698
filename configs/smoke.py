"""A first look in about a minute: 512 training faces, 256 PublicTest faces, 2 epochs.

    python -m fer_jax.main --config configs/smoke.py --workdir runs/smoke
    python -m fer_jax.main --config configs/smoke.py --workdir runs/smoke_generated \\
        --config.data.source=generated      # no FER2013 needed

The reference's 1e-5 backbone rate barely moves a randomly initialised backbone in so few steps, so
smoke trains both groups at 1e-3.
"""
import ml_collections

from configs import enhanced


def get_config() -> ml_collections.ConfigDict:
  config = enhanced.get_config()
  config.data.max_train_examples = 512
  config.data.max_eval_examples = 256
  config.data.generated_train_size = 512
  config.data.generated_eval_size = 256
  config.num_epochs = 2
  config.backbone_lr = 1e-3
  config.log_every_steps = 4
  return config
