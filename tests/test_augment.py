import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import enhanced
from fer_jax import FerJaxError, augment
from fer_jax.augment import clahe, ops
from fer_jax.data.csv import read_fer2013_csv


@pytest.fixture
def config():
  return enhanced.get_config().augment


@pytest.fixture(scope='module')
def real_faces(real_csv, tmp_path_factory):
  """40 real Training faces, read from the head of the CSV."""
  opener = gzip.open if real_csv.endswith('.gz') else open
  with opener(real_csv, 'rt') as f:
    head = ''.join(next(f) for _ in range(41))
  path = tmp_path_factory.mktemp('head') / 'head.csv'
  path.write_text(head)
  return read_fer2013_csv(str(path))['Training'][0]


def _faces(n=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 48, 48, 1), dtype=np.uint8)


def test_pipeline_is_deterministic_per_key_and_random_per_face(config):
  run = jax.jit(lambda f, k: augment.augment_faces(f, k, 1.0, config))
  same_face = np.repeat(_faces(1), 8, axis=0)
  first, again = run(same_face, jax.random.key(0)), run(same_face, jax.random.key(0))
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, run(same_face, jax.random.key(1)))
  distinct = {np.asarray(face).tobytes() for face in first}
  assert len(distinct) == 8, 'faces in a batch must draw their own parameters'
  assert first.shape == same_face.shape and first.dtype == jnp.float32
  assert float(first.min()) >= -1.0 and float(first.max()) <= 1.0


def test_strength_zero_is_the_identity(config):
  faces = _faces()
  out = augment.augment_faces(faces, jax.random.key(3), jnp.float32(0.0), config)
  np.testing.assert_allclose(out, augment.normalize(faces), atol=1e-6)


def test_flip_twice_is_the_identity(config):
  config.flip_prob = 1.0
  faces = augment.to_float(_faces())
  once = ops.flip(faces, jax.random.key(0), 1.0, config)
  assert not np.allclose(once, faces)
  np.testing.assert_array_equal(ops.flip(once, jax.random.key(1), 1.0, config), faces)


def test_zero_rotation_and_identity_affine_change_nothing(config):
  faces = augment.to_float(_faces())
  config.rotate_degrees = 0.0
  np.testing.assert_allclose(ops.rotate(faces, jax.random.key(0), 1.0, config), faces, atol=1e-5)
  config.affine_translate = config.affine_scale = config.affine_shear = 0.0
  np.testing.assert_allclose(ops.affine(faces, jax.random.key(0), 1.0, config), faces, atol=1e-5)
  config.perspective_distortion, config.perspective_prob = 0.0, 1.0
  np.testing.assert_allclose(ops.perspective(faces, jax.random.key(0), 1.0, config), faces, atol=1e-4)


def test_rotation_by_90_degrees_matches_rot90():
  faces = augment.to_float(_faces(2))
  rotated = ops.warp(faces, ops._about_centre(
      jnp.array([[[0.0, 1.0], [-1.0, 0.0]]] * 2), jnp.zeros((2, 2)), 48), 128)
  matches = [np.allclose(rotated, np.rot90(faces, k, axes=(1, 2)), atol=1e-5) for k in (1, 3)]
  assert any(matches)


def test_warps_fill_with_grey(config):
  faces = jnp.zeros((4, 48, 48, 1))
  config.affine_translate, config.affine_scale, config.affine_shear = 0.5, 0.0, 0.0
  out = ops.affine(faces, jax.random.key(0), 1.0, config)
  assert np.isclose(np.asarray(out).max(), 128 / 255.0, atol=1e-6)


def test_brightness_moves_the_mean_the_right_way():
  faces = augment.to_float(np.full((2, 48, 48, 1), 100, np.uint8))
  brighter, darker = ops.scale_brightness(faces, jnp.array([1.2, 0.8]))
  assert float(brighter.mean()) > float(faces[0].mean()) > float(darker.mean())


def test_contrast_keeps_the_mean_and_spreads_values(config):
  faces = augment.to_float(_faces(4) // 2 + 64)
  config.contrast, config.contrast_prob = 0.3, 1.0
  out = ops.contrast(faces, jax.random.key(0), 1.0, config)
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), faces.mean(axis=(1, 2, 3)), atol=1e-5)
  assert not np.allclose(out.std(axis=(1, 2, 3)), faces.std(axis=(1, 2, 3)))


def test_clahe_matches_opencv_and_skimage_on_real_faces(real_faces):
  """Tolerances: OpenCV (the reference's CLAHE, same algorithm): within 1/255 everywhere. skimage works
  on 14-bit levels, pads the image to whole tiles and clips at a differently rounded limit, so it
  agrees on average (mean |diff| 0.032 measured, bound 0.04) with a 99th percentile of 0.14 (bound
  0.16) on these 40 faces."""
  import cv2
  from skimage import exposure
  ours = np.asarray(clahe.clahe(jnp.asarray(real_faces, jnp.float32) / 255.0, 2.0, 4))[..., 0]
  opencv = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
  reference = np.stack([opencv.apply(face[..., 0]) for face in real_faces]) / 255.0
  assert np.abs(ours - reference).max() <= 1 / 255 + 1e-6
  sk = np.stack([exposure.equalize_adapthist(face[..., 0], kernel_size=12, clip_limit=2.0 / 256,
                                             nbins=256) for face in real_faces])
  difference = np.abs(ours - sk)
  assert difference.mean() <= 0.04 and np.percentile(difference, 99) <= 0.16
  # ...and equalisation does change the faces.
  assert np.abs(ours - real_faces[..., 0] / 255.0).mean() > 0.02


def test_strength_schedule_ramps_and_compiles_once(config):
  config.strength_start, config.strength_end, config.ramp_epochs = 0.0, 1.0, 4
  assert float(augment.strength_at(config, jnp.int32(1))) == 0.0
  assert float(augment.strength_at(config, jnp.int32(3))) == pytest.approx(0.5)
  assert float(augment.strength_at(config, jnp.int32(9))) == 1.0
  augment_fn = jax.jit(augment.make_train_augment(config, steps_per_epoch=10))
  faces = _faces(4)
  first_epoch = augment_fn(faces, jax.random.key(0), jnp.int32(0))
  np.testing.assert_allclose(first_epoch, augment.normalize(faces), atol=1e-6)  # strength 0
  for step in range(1, 60, 7):
    augment_fn(faces, jax.random.key(step), jnp.int32(step))
  assert augment_fn._cache_size() == 1


@pytest.mark.parametrize('field,value,message', [
    ('steps', 'flip,twirl', r"config.augment.steps names 'twirl', which is not a step"),
    ('rotate_degrees', -5.0, r'config.augment.rotate_degrees=-5.0 is out of range; set it in \[0, 180\]'),
    ('noise_prob', 1.5, r'config.augment.noise_prob=1.5 is not a probability; set it in \[0, 1\]'),
    ('clahe_tiles', 5, r'config.augment.clahe_tiles=5 does not divide 48'),
])
def test_bad_config_names_the_field(config, field, value, message):
  config[field] = value
  with pytest.raises(FerJaxError, match=message):
    augment.make_train_augment(config, 10)


def test_steps_can_be_switched_off(config):
  config.steps = ''
  faces = _faces()
  np.testing.assert_allclose(augment.augment_faces(faces, jax.random.key(0), 1.0, config),
                             augment.normalize(faces), atol=1e-6)
