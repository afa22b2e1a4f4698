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


# The flat weight format travels in shards, each under what a file transfer may cap (16 MiB).
SHARD_BYTES = 15 * 2 ** 20


def save_flat(variables: dict[str, Any], directory: str, prefix: str, dtype: str = 'float32',
              shard_bytes: int = SHARD_BYTES) -> list[str]:
  """Writes variables as '/'-named arrays (to_half's format) in <prefix>_<i>.npz shards; returns
  their paths. What experiments/device_train.py brings back from an accelerator."""
  shards, current, size = [], {}, 0
  for name, value in to_half(variables, dtype).items():
    if current and size + value.nbytes > shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name], size = value, size + value.nbytes
  shards.append(current)
  os.makedirs(directory, exist_ok=True)
  paths = []
  for index, shard in enumerate(shards):
    paths.append(os.path.join(directory, f'{prefix}_{index}.npz'))
    np.savez(paths[-1], **shard)
  return paths


def load_flat(paths: list[str]) -> dict[str, Any]:
  """float32 variables from the shards save_flat wrote."""
  if not paths:
    raise FerJaxError('no weight shards to load; pass the .npz files save_flat wrote.')
  arrays = {}
  for path in paths:
    with np.load(path) as shard:
      arrays.update({name: shard[name] for name in shard.files})
  return from_half(arrays)


def import_workdir(variables: dict[str, Any], meta: dict[str, Any], history: list[dict[str, Any]],
                   workdir: str) -> None:
  """A workdir whose `best` checkpoint holds these variables (evaluate, predict, export and
  Predictor.from_workdir read it; it serves, it does not resume: no optimiser state)."""
  from fer_jax import metrics
  from fer_jax.checkpoint import BEST, Checkpoints
  run = dict(meta['run'])
  run['history'] = [r for r in history if r['epoch'] <= run['epoch']]
  if not run['history']:
    raise FerJaxError(f'the history holds no epoch up to {run["epoch"]}; pass the run\'s '
                      'metrics.jsonl.')
  checkpoints = Checkpoints(workdir)
  checkpoints.save(BEST, run['history'][-1]['step'], variables, {**meta, 'run': run})
  checkpoints.close()
  metrics.write_history(workdir, history)
