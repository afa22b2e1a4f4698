"""The best recipe found so far for EnhancedCNN48 (issue #9): the seed's model, a CPU-sized schedule.

    FER2013_PATH=../shared/data/fer2013/fer2013.csv.gz \\
        python -m fer_jax.main --config configs/best.py --workdir runs/best

Changes from configs/enhanced.py (the seed): both groups at 1e-3 (from scratch the seed's 1e-5
backbone barely moves: README, "The seed's recipe on full FER2013"), Adam with a one-epoch warm-up
into a cosine decay to zero over the run instead of StepLR, label smoothing 0.1 against FER2013's
noisy labels, dropout_rate 0.3 (a short run cannot afford the seed's 0.5), light geometric
augmentation (flip, +-10 deg rotation, small shifts / zooms / shear), batch 64, BatchNorm
statistics re-measured after each epoch (enhanced's default).

Reached (the shipped weights, README "Model card"): 55.84 % PublicTest after epoch 6, 56.37 % with
flip TTA, float16, in about 85 min of the project's 2-core CPU (~8.5 min per epoch uncontended);
the run was cut short of this file's 12 epochs (resumed with --config.num_epochs=10, then 8, and
stopped after epoch 6). GPU time: not measured (no GPU was lent to this task).
"""
import ml_collections

from configs import enhanced


def get_config() -> ml_collections.ConfigDict:
  config = enhanced.get_config()
  config.model.dropout_rate = 0.3
  config.augment.steps = 'flip,rotate,affine'
  config.augment.rotate_degrees = 10.0
  config.augment.affine_translate = 0.08
  config.augment.affine_scale = 0.08
  config.augment.affine_shear = 5.0
  config.batch_size = 64
  config.num_epochs = 12
  config.backbone_lr = 1e-3
  config.head_lr = 1e-3
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 1.0
  config.label_smoothing = 0.1
  config.early_stopping_patience = 0  # a cosine run goes to its end
  config.log_every_steps = 100
  return config
