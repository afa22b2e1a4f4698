"""Starting a run from trained weights (config.init_from): the shipped model or another workdir.

When the new data's classes are those of the weights, every variable is taken; when they differ
(another class list, another class count), every variable but the last dense layer is taken, and
that layer starts fresh. config.freeze_backbone_epochs keeps the backbone still while it learns.
"""
import os
from typing import Any

from absl import logging
import flax
import jax
import numpy as np

from fer_jax import FerJaxError


def load_source(init_from: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
  """(variables, model config, class names) of 'pretrained' or a workdir's best checkpoint."""
  if init_from == 'pretrained':
    from fer_jax import pretrained
    variables, card = pretrained.load()
    model_config, label_map = card['model_config'], card['label_map']
  else:
    if not os.path.isdir(init_from):
      raise FerJaxError(f'config.init_from={init_from!r} is neither "pretrained" nor a workdir; '
                        'pass "pretrained" or the folder of a finished training run.')
    from fer_jax.checkpoint import load_for_inference
    variables, meta = load_for_inference(init_from, 'best')
    model_config, label_map = meta['model_config'], meta['label_map']
  return variables, model_config, [label_map[str(i)] for i in range(len(label_map))]


def _last_dense(params: Any) -> str:
  return max((name for name in params['head'] if name.startswith('Dense_')),
             key=lambda name: int(name.split('_')[1]))


def initialise(params: Any, batch_stats: Any, init_from: str, model_name: str,
               classes: list[str]) -> tuple[Any, Any]:
  """(params, batch_stats) of a fresh model with the weights of `init_from` put in."""
  variables, source_config, source_classes = load_source(init_from)
  if source_config['name'] != model_name:
    raise FerJaxError(f'config.init_from={init_from!r} holds a {source_config["name"]!r} model, but '
                      f'config.model.name is {model_name!r}; set config.model.name to '
                      f'{source_config["name"]!r}.')
  fresh = _last_dense(params) if list(source_classes) != list(classes) else None
  new_params = flax.traverse_util.flatten_dict(jax.device_get(params))
  for path, value in flax.traverse_util.flatten_dict(variables['params']).items():
    if fresh and path[:2] == ('head', fresh):
      continue
    if path not in new_params or new_params[path].shape != np.shape(value):
      raise FerJaxError(f'config.init_from={init_from!r}: its layer {"/".join(path)} does not fit '
                        'this model; use weights of the same model.')
    new_params[path] = np.asarray(value, new_params[path].dtype)
  if fresh:
    logging.info('init_from %s: its classes (%s) are not the data\'s (%s), so the last dense '
                 'layer (head/%s) starts fresh; every other layer is taken', init_from,
                 ', '.join(source_classes), ', '.join(classes), fresh)
  else:
    logging.info('init_from %s: every layer taken (same classes: %s)', init_from, ', '.join(classes))
  stats = jax.tree_util.tree_map(np.asarray, variables['batch_stats'])
  return flax.traverse_util.unflatten_dict(new_params), stats
