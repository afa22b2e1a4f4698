"""The reference's 11-step training augmentation, on device, random per face, under one jit
(fer_jax/augment/pipeline.py; the steps in ops.py, CLAHE in clahe.py).

`from fer_jax import augment; augment.make_train_augment(...)` reaches pipeline.py's functions
(normalize, to_float, validate, step_names, strength_at, augment_faces, make_train_augment) and
constants; they are loaded on first use, so `python -m fer_jax.augment --help` answers without
importing JAX.
"""
from typing import Any


def __getattr__(name: str) -> Any:
  if name.startswith('__'):
    raise AttributeError(name)
  from fer_jax.augment import pipeline
  try:
    return getattr(pipeline, name)
  except AttributeError:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}') from None
