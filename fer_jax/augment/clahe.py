"""Contrast-limited adaptive histogram equalisation in jnp, batched, jit-able.

OpenCV's algorithm: a tiles x tiles grid, a 256-bin histogram per tile clipped at
int(clip_limit * tile_area / 256) with the excess given back as OpenCV does (evenly, the residual
to every step-th bin), the rounded cumulative histogram as each tile's mapping, and bilinear
blending of the four nearest tiles' mappings (anchored at tile centres, clamped at the borders).
"""
import jax
import jax.numpy as jnp

BINS = 256


def clahe(faces: jax.Array, clip_limit: float, tiles: int) -> jax.Array:
  """faces float (B, H, W, 1) in [0, 1], H and W divisible by tiles -> equalised, same shape."""
  batch, height, width, _ = faces.shape
  tile_h, tile_w = height // tiles, width // tiles
  levels = jnp.clip(jnp.round(faces[..., 0] * 255.0), 0, 255).astype(jnp.int32)  # (B, H, W)
  # (B, tiles, tiles, tile_h * tile_w) grey levels per tile.
  per_tile = levels.reshape(batch, tiles, tile_h, tiles, tile_w).transpose(0, 1, 3, 2, 4)
  per_tile = per_tile.reshape(batch, tiles, tiles, tile_h * tile_w)
  hist = jax.vmap(jax.vmap(jax.vmap(lambda v: jnp.zeros(BINS).at[v].add(1.0))))(per_tile)
  area = tile_h * tile_w
  limit = max(float(int(clip_limit * area / BINS)), 1.0)  # OpenCV truncates to a whole count
  clipped = jnp.minimum(hist, limit)
  excess = (hist - clipped).sum(-1, keepdims=True).astype(jnp.int32)
  # OpenCV's redistribution: excess // 256 to every bin, then one more to every step-th bin
  # from bin 0 until the residual is used up.
  batch_share, residual = excess // BINS, excess % BINS
  step = jnp.maximum(BINS // jnp.maximum(residual, 1), 1)
  bins = jnp.arange(BINS)
  extra = ((bins % step) == 0) & ((bins // step) < residual)
  clipped = clipped + batch_share + extra
  lut = jnp.round(jnp.cumsum(clipped, -1) * (255.0 / area))  # (B, tiles, tiles, 256)

  def anchors(size, tile):
    pos = jnp.arange(size) / tile - 0.5  # OpenCV's anchor for pixel index i
    low = jnp.floor(pos)
    frac = pos - low
    low = low.astype(jnp.int32)
    return jnp.clip(low, 0, tiles - 1), jnp.clip(low + 1, 0, tiles - 1), frac

  y0, y1, fy = anchors(height, tile_h)
  x0, x1, fx = anchors(width, tile_w)
  b = jnp.arange(batch)[:, None, None]

  def mapped(ty, tx):
    return lut[b, ty[None, :, None], tx[None, None, :], levels]

  top = mapped(y0, x0) * (1 - fx)[None, None, :] + mapped(y0, x1) * fx[None, None, :]
  bottom = mapped(y1, x0) * (1 - fx)[None, None, :] + mapped(y1, x1) * fx[None, None, :]
  out = top * (1 - fy)[None, :, None] + bottom * fy[None, :, None]
  return jnp.clip(out / 255.0, 0.0, 1.0)[..., None]
