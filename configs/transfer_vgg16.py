"""The reference's CNNWithTransferLearningAdaptation: VGG16 on the native 48x48 grey face.

    python -m fer_jax.main --config configs/transfer_vgg16.py --workdir runs/transfer_vgg16 \\
        --config.model.pretrained_weights=vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5

VGG16's 13 convs and 5 pools (48 -> 1x1x512) with the enhanced dense head; ImageNet weights come
from a file you pass (Keras .h5, or a torchvision state_dict as .safetensors / .npz: see
fer_jax/models/weights.py); '' trains from scratch. The first conv is made one-channel by summing
its RGB kernels ('luminance' weighs them instead). The reference's learning rates: backbone 1e-5,
head 1e-3, everything else as configs/enhanced.py. Size and speed against the upsampled route:
experiments/README.md, "Transfer learning: native vs upsampled".
"""
import ml_collections

from configs import enhanced


def get_config() -> ml_collections.ConfigDict:
  config = enhanced.get_config()
  config.model.name = 'vgg16'               # or 'resnet18', 'resnet50'
  config.freeze_backbone_epochs = 0         # e.g. 2: the fresh head learns before the backbone moves
  return config
