"""The reference's 11-step training augmentation, on device, random per face, under one jit
(fer_jax/augment/pipeline.py; the steps in ops.py, CLAHE in clahe.py).

`from fer_jax import augment; augment.make_train_augment(...)` reaches pipeline.py's functions
(normalize, to_float, validate, step_names, strength_at, augment_faces, make_train_augment) and
constants; they are loaded on first use, so `python -m fer_jax.augment --help` answers without
importing JAX.
"""
import importlib
from typing import Any


def __getattr__(name: str) -> Any:
  if name.startswith('__'):
    raise AttributeError(name)
  # import_module, not `from fer_jax.augment import pipeline`, which would ask this function for
  # `pipeline` again before the submodule is loaded.
  pipeline = importlib.import_module('fer_jax.augment.pipeline')
  try:
    return getattr(pipeline, name)
  except AttributeError:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}') from None
