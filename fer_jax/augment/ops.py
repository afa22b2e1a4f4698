"""The reference's random steps, each a pure function `(faces, key, strength, params) -> faces`.

Faces are float32 (B, 48, 48, 1) in [0, 1] (the noise step: normalised [-1, 1]). Every face draws
its own parameters; `strength` (a traced scalar, so a schedule never recompiles) scales every
magnitude, and strength 0 returns the faces unchanged. dm-pix does the flips, contrast and the
bilinear resampling of every geometric step; jnp builds their pull matrices (rotation, affine,
perspective homography) and does what dm-pix lacks (sharpness; CLAHE in clahe.py).
pix.rotate / pix.affine_transform interpolate over (y, x, channel) and measured 4x slower here than
one 2-D interpolation per face through the shared `warp`.
"""
import math
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp


def _apply_with_prob(key: jax.Array, prob: float, strength: jax.Array, augmented: jax.Array,
                     faces: jax.Array) -> jax.Array:
  """Per face: the augmented version with probability prob (never when strength is 0)."""
  chosen = jax.random.bernoulli(key, prob, (faces.shape[0], 1, 1, 1)) & (strength > 0)
  return jnp.where(chosen, augmented, faces)


def _uniform(key: jax.Array, n: int, limit: jax.Array) -> jax.Array:
  return jax.random.uniform(key, (n,), minval=-1.0, maxval=1.0) * limit


def flip(faces, key, strength, p):
  """(1) Mirror left-right."""
  return _apply_with_prob(key, p.flip_prob, strength, jax.vmap(pix.flip_left_right)(faces), faces)


def _pixel_grid(size: int) -> jax.Array:
  ys, xs = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                        indexing='ij')
  return jnp.stack([xs.ravel(), ys.ravel(), jnp.ones(size * size)])  # (3, H*W) as (x, y, 1)


def warp(faces: jax.Array, pull: jax.Array, fill: float) -> jax.Array:
  """Pull resampling: output pixel (x, y) reads the input at pull[b] @ (x, y, 1) (homogeneous),
  bilinear, `fill` (0-255) outside. One 2-D interpolation per face (dm-pix)."""
  size = faces.shape[1]
  grid = _pixel_grid(size)

  def one(face, matrix):
    source = matrix @ grid
    coords = jnp.stack([source[1] / source[2], source[0] / source[2]])  # (y, x)
    # Snap float noise at the border (e.g. -1e-7 from a solved homography) back inside.
    inside = jnp.clip(coords, 0.0, size - 1.0)
    coords = jnp.where(jnp.abs(coords - inside) < 1e-3, inside, coords)
    values = pix.flat_nd_linear_interpolate_constant(face[..., 0], coords, cval=fill / 255.0)
    return values.reshape(face.shape)
  return jax.vmap(one)(faces, pull)


def _about_centre(linear: jax.Array, translate: jax.Array, size: int) -> jax.Array:
  """Pull matrices for input = linear @ (output - centre - translate) + centre, all (B, ...)."""
  centre = (size - 1) / 2.0
  shift = centre + translate                            # (B, 2) in (x, y)
  offset = centre - jnp.einsum('bij,bj->bi', linear, shift)
  top = jnp.concatenate([linear, offset[:, :, None]], axis=2)  # (B, 2, 3)
  bottom = jnp.broadcast_to(jnp.array([[0.0, 0.0, 1.0]]), (linear.shape[0], 1, 3))
  return jnp.concatenate([top, bottom], axis=1)


def rotate(faces, key, strength, p):
  """(2) Rotate about the centre by up to +-rotate_degrees, grey fill outside."""
  n = faces.shape[0]
  angle_key, prob_key = jax.random.split(key)
  angles = _uniform(angle_key, n, math.radians(p.rotate_degrees) * strength)
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  linear = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)  # R(-angle)
  rotated = warp(faces, _about_centre(linear, jnp.zeros((n, 2)), faces.shape[1]), p.fill)
  return _apply_with_prob(prob_key, p.rotate_prob, strength, rotated, faces)


def affine(faces, key, strength, p):
  """(3) Translate, scale and x-shear about the centre (torchvision RandomAffine's parameters)."""
  n, size = faces.shape[0], faces.shape[1]
  keys = jax.random.split(key, 5)
  translate = jnp.stack([_uniform(keys[0], n, p.affine_translate * size * strength),
                         _uniform(keys[1], n, p.affine_translate * size * strength)], -1)
  scale = 1.0 + _uniform(keys[2], n, p.affine_scale * strength)
  shear = jnp.tan(_uniform(keys[3], n, math.radians(p.affine_shear) * strength))
  # Forward (push) map: scale * [[1, -shear], [0, 1]]; pull with its inverse.
  ones, zeros = jnp.ones(n), jnp.zeros(n)
  linear = jnp.stack([jnp.stack([ones, shear], -1), jnp.stack([zeros, ones], -1)], -2) / scale[:, None, None]
  warped = warp(faces, _about_centre(linear, translate, size), p.fill)
  return _apply_with_prob(keys[4], p.affine_prob, strength, warped, faces)


def _homography(src: jax.Array, dst: jax.Array) -> jax.Array:
  """3x3 H with H @ [dst, 1] ~ [src, 1] for four point pairs (x, y)."""
  rows = []
  for (x, y), (u, v) in zip(dst, src):
    rows.append(jnp.array([x, y, 1, 0, 0, 0, -u * x, -u * y]))
    rows.append(jnp.array([0, 0, 0, x, y, 1, -v * x, -v * y]))
  solution = jnp.linalg.solve(jnp.stack(rows), src.reshape(-1))
  return jnp.append(solution, 1.0).reshape(3, 3)


def perspective(faces, key, strength, p):
  """(4) Move each corner inward by up to distortion * half the size (torchvision RandomPerspective)."""
  n, size = faces.shape[0], faces.shape[1]
  corner_key, prob_key = jax.random.split(key)
  last = size - 1.0
  corners = jnp.array([[0.0, 0.0], [last, 0.0], [last, last], [0.0, last]])  # (x, y)
  inward = jnp.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], jnp.float32)
  shift = jax.random.uniform(corner_key, (n, 4, 2)) * (p.perspective_distortion * size / 2 * strength)
  pull = jax.vmap(lambda moved: _homography(corners, moved))(corners + inward * shift)
  return _apply_with_prob(prob_key, p.perspective_prob, strength, warp(faces, pull, p.fill), faces)


def contrast(faces, key, strength, p):
  """(5) Scale the distance from each face's mean by a factor in 1 +- contrast."""
  factor_key, prob_key = jax.random.split(key)
  factors = 1.0 + _uniform(factor_key, faces.shape[0], p.contrast * strength)
  adjusted = jax.vmap(pix.adjust_contrast)(faces, factors)
  return _apply_with_prob(prob_key, p.contrast_prob, strength, jnp.clip(adjusted, 0.0, 1.0), faces)


def scale_brightness(faces: jax.Array, factors: jax.Array) -> jax.Array:
  return jnp.clip(faces * factors[:, None, None, None], 0.0, 1.0)


def brightness(faces, key, strength, p):
  """(6) Multiply by a factor in 1 +- brightness (ColorJitter's multiplicative brightness; dm-pix's
  adjust_brightness adds a delta, which would wash out dark faces)."""
  factor_key, prob_key = jax.random.split(key)
  factors = 1.0 + _uniform(factor_key, faces.shape[0], p.brightness * strength)
  adjusted = scale_brightness(faces, factors)
  return _apply_with_prob(prob_key, p.brightness_prob, strength, adjusted, faces)


_SMOOTH = jnp.array([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def sharpness(faces, key, strength, p):
  """(7) Blend with a smoothed copy (PIL's / torchvision's kernel): factor > 1 sharpens; borders kept."""
  factor = 1.0 + (p.sharpness_factor - 1.0) * strength
  height, width = faces.shape[1:3]
  # Nine shifted slices: on CPU this beats a 1-channel convolution several times over.
  inner = sum(_SMOOTH[dy, dx] * faces[:, dy:height - 2 + dy, dx:width - 2 + dx, :]
              for dy in range(3) for dx in range(3))
  smooth = faces.at[:, 1:-1, 1:-1, :].set(inner)
  sharpened = jnp.clip(smooth + factor * (faces - smooth), 0.0, 1.0)
  return _apply_with_prob(key, p.sharpness_prob, strength, sharpened, faces)


def clahe_step(faces, key, strength, p):
  """(8) CLAHE, blended in by strength."""
  from fer_jax.augment.clahe import clahe
  equalised = clahe(faces, p.clahe_clip, p.clahe_tiles)
  return _apply_with_prob(key, p.clahe_prob, strength, faces + strength * (equalised - faces), faces)


def noise(normalised, key, strength, p):
  """(11) Gaussian noise on the normalised face, clipped to [-1, 1]."""
  noise_key, prob_key = jax.random.split(key)
  noisy = normalised + jax.random.normal(noise_key, normalised.shape) * p.noise_std * strength
  return _apply_with_prob(prob_key, p.noise_prob, strength, jnp.clip(noisy, -1.0, 1.0), normalised)


# Steps in the reference's order; 'noise' runs after normalisation (steps 9-10).
STEPS: dict[str, Any] = {'flip': flip, 'rotate': rotate, 'affine': affine,
                         'perspective': perspective, 'contrast': contrast,
                         'brightness': brightness, 'sharpness': sharpness, 'clahe': clahe_step,
                         'noise': noise}
