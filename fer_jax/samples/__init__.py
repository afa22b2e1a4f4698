"""Sample inputs that ship with fer_jax, so a first run needs nothing downloaded.

    python -m fer_jax.predict --pretrained --sample      # both samples
    from fer_jax import samples; samples.path('photo')   # their paths, for any command

`photo`: astronaut.jpg, 320x320, one smiling face (NASA's portrait of Eileen Collins, public
domain, as shipped in scikit-image's data). `clip`: astronaut_clip.mp4, 4 s, 320x240, 10 frames/s,
that face gliding and growing across a grey frame. Both are made by experiments/make_samples.py;
README.md beside them states their source and licence.
"""
import importlib.resources

from fer_jax import FerJaxError

SAMPLES: dict[str, str] = {'photo': 'astronaut.jpg', 'clip': 'astronaut_clip.mp4'}


def path(name: str) -> str:
  """The file path of the sample `name` ('photo' or 'clip'), inside the installed package."""
  if name not in SAMPLES:
    raise FerJaxError(f'no sample named {name!r}; the samples are {", ".join(SAMPLES)}.')
  return str(importlib.resources.files(__name__) / SAMPLES[name])


def paths() -> list[str]:
  """Every sample's path, photo first."""
  return [path(name) for name in SAMPLES]
