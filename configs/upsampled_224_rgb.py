"""The "traditional" route the reference compares itself with, kept to be measured.

    python experiments/native_vs_upsampled.py

48x48 grey -> 224x224 (bilinear) -> grey copied to three channels -> VGG16 with its own classifier
(25088 -> 4096 -> 4096 -> 7, dropout 0.5). It trains through the same loop
(`python -m fer_jax.main --config configs/upsampled_224_rgb.py`), but at roughly 20x the cost of
configs/transfer_vgg16.py per face on this CPU (experiments/README.md).
"""
import ml_collections

from configs import enhanced


def get_config() -> ml_collections.ConfigDict:
  config = enhanced.get_config()
  config.model.name = 'vgg16_224_rgb'
  config.model.input_size = 224
  config.model.pretrained_weights = ''
  config.bn_recalibration_faces = 0  # no BatchNorm in this model
  return config
