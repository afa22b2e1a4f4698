"""The best recipe for EnhancedCNN48: the reference's model, a long schedule for an accelerator.

    python -m fer_jax.main --config configs/best.py --workdir runs/best --config.steps_per_call=448

(steps_per_call=448, one epoch per compiled call, on an accelerator only: XLA:CPU unrolls the
loop.) Changes from configs/enhanced.py (the reference's recipe): SGD with Nesterov momentum 0.9 and coupled
L2 5e-4, both groups at 0.01 (from scratch a 1e-5 backbone barely moves), a two-epoch warm-up
into a cosine decay to zero, label smoothing 0.1, random erasing on half the faces, an exponential
moving average of the weights (0.999) for evaluation and serving, dropout_rate 0.3, light geometric
augmentation (flip, +-10 deg rotation, shifts of 10 %, zooms of 15 %, 5 deg shear), batch 64.
The CPU-sized recipe is configs/best_cpu.py.

Reached (the shipped weights, docs/model_card.md; experiments/README.md, study 4): 68.12 %
PublicTest at epoch 167 (EMA weights; 69.27 % with flip TTA, 70.91 % with ten crops, at the stored
temperature) on one H100 GPU, at ~1.0 s per epoch and ~55 s of start-up. That run was stopped after epoch 186 of 271 and resumed
from 185 with --config.num_epochs=205 (no better epoch came); epochs 1-167 of this file follow its
schedule. Its curve is within 2 points of its best by epoch 50 and peaks mid-run, so a shorter
cosine (~100 epochs) is worth trying. On a 2-core CPU an epoch takes 4-8 min: use an accelerator.
"""
import ml_collections

from configs import enhanced


def get_config() -> ml_collections.ConfigDict:
  config = enhanced.get_config()
  config.model.dropout_rate = 0.3
  config.augment.steps = 'flip,rotate,affine'
  config.augment.rotate_degrees = 10.0
  config.augment.affine_translate = 0.1
  config.augment.affine_scale = 0.15
  config.augment.affine_shear = 5.0
  config.random_erasing = 0.5
  config.batch_size = 64
  config.num_epochs = 271  # the length the 68.12 % run was given; its best epoch was 167
  config.optimizer = 'sgd'
  config.momentum = 0.9
  config.nesterov = True
  config.backbone_lr = 0.01
  config.head_lr = 0.01
  config.weight_decay = 5e-4
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 2.0
  config.label_smoothing = 0.1
  config.ema_decay = 0.999
  config.early_stopping_patience = 0  # a cosine run goes to its end
  config.checkpoint_every_epochs = 5
  config.log_every_steps = 100
  return config
