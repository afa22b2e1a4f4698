"""Weights that ship inside the package, so a fresh install can classify faces with no training.

`python -m fer_jax.pretrained` (fer_jax/pretrained/__main__.py) exports a checkpoint to
`fer_jax/weights/`: `fer2013_cnn48.npz` (parameters and BatchNorm statistics
in float16, '/'-joined names) and `fer2013_cnn48.json` (model config, label map, provenance and
the PublicTest accuracy of the stored half-precision weights, measured here at export).
`load()` returns float32 variables; `Predictor.pretrained()` wraps them.
"""
import json
import os
from typing import Any

import numpy as np

from fer_jax import FerJaxError

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'weights')
NAME = 'fer2013_cnn48'
# The slice tests/test_pretrained.py scores: fixed, so the card's number for it can be checked.
CHECK_SLICE = (0, 512)


def paths(directory: str = WEIGHTS_DIR, name: str = NAME) -> tuple[str, str]:
  return os.path.join(directory, f'{name}.npz'), os.path.join(directory, f'{name}.json')


def to_half(variables: dict[str, Any], dtype: str = 'float16') -> dict[str, np.ndarray]:
  import flax
  import jax
  flat = flax.traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  return {name: np.asarray(value).astype(dtype) for name, value in flat.items()}


def from_half(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  import flax
  return flax.traverse_util.unflatten_dict(
      {name: np.asarray(value, np.float32) for name, value in arrays.items()}, sep='/')


def load(directory: str = WEIGHTS_DIR, name: str = NAME) -> tuple[dict[str, Any], dict[str, Any]]:
  """(float32 variables, card) of the shipped model."""
  weights_path, card_path = paths(directory, name)
  if not (os.path.exists(weights_path) and os.path.exists(card_path)):
    raise FerJaxError(f'the pretrained weights {weights_path} (and {os.path.basename(card_path)}) '
                      'are not installed; reinstall fer_jax, or train a model and use --workdir.')
  with np.load(weights_path) as stored:
    variables = from_half(dict(stored))
  with open(card_path) as f:
    card = json.load(f)
  return variables, card


def export(variables: dict[str, Any], card: dict[str, Any], directory: str = WEIGHTS_DIR,
           name: str = NAME) -> str:
  """Writes both files through temporary names, so a failure leaves the old pair intact."""
  os.makedirs(directory, exist_ok=True)
  weights_path, card_path = paths(directory, name)
  np.savez_compressed(weights_path + '.tmp.npz', **to_half(variables, card['dtype']))
  with open(card_path + '.tmp', 'w') as f:
    json.dump(card, f, indent=2)
  os.replace(weights_path + '.tmp.npz', weights_path)
  os.replace(card_path + '.tmp', card_path)
  return weights_path
