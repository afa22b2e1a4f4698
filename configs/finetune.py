"""Fine-tune the shipped model on your own image-folder dataset (any classes).

    python -m fer_jax.main --config configs/finetune.py --workdir runs/my_faces \\
        --config.data.images_path=my_faces     # my_faces/{train,validation}/<class>/*.png|jpg

Starts from the shipped weights (config.init_from='pretrained'; or a workdir of yours). With the
same seven classes every layer is taken; with others (say happy / sad / neutral) the last dense
layer starts fresh and the backbone is held still for the first epoch while it learns. Then the
backbone at 1e-4 and the head at 1e-3 (Adam, cosine), light augmentation, 10 epochs.
Figures: docs/finetune.md.
"""
import ml_collections

from configs import best_cpu


def get_config() -> ml_collections.ConfigDict:
  config = best_cpu.get_config()
  config.data.source = 'images'
  config.init_from = 'pretrained'
  config.model.dropout_rate = 0.3   # the shipped model's
  config.backbone_lr = 1e-4
  config.head_lr = 1e-3
  config.freeze_backbone_epochs = 1
  config.num_epochs = 10
  config.warmup_epochs = 0.0
  config.batch_size = 32
  config.bn_recalibration_faces = 1024
  return config
