"""Any image file -> one 48x48 grey face, and image-folder datasets (`<split>/<class>/*.png`)."""
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_jax import EMOTIONS, FerJaxError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def _to_grey(image: Image.Image) -> np.ndarray:
  """Grey uint8 from any PIL mode: 16-bit scaled down, alpha composited on white, palette expanded."""
  image = ImageOps.exif_transpose(image)
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith('I;16') or values.max() > 255 else 255.0
    return np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
  if image.mode == 'P':
    image = image.convert('RGBA')
  if image.mode in ('RGBA', 'LA', 'PA'):
    background = Image.new('RGBA', image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, image.convert('RGBA'))
  return np.asarray(image.convert('L'), dtype=np.uint8)


def largest_face(grey: np.ndarray) -> np.ndarray | None:
  """The largest frontal face found by OpenCV's bundled Haar cascade, or None."""
  try:
    import cv2
  except ImportError:
    raise FerJaxError('--detect_faces needs OpenCV: pip install "fer_jax[faces]" '
                      '(opencv-python-headless<5, which ships the Haar cascades).') from None
  cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades,
                                               'haarcascade_frontalface_default.xml'))
  faces = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
  if len(faces) == 0:
    return None
  x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
  return grey[y:y + h, x:x + w]


def to_face48(grey: np.ndarray) -> np.ndarray:
  """Resize to 48x48: area averaging when shrinking, bilinear when enlarging."""
  if grey.shape == (48, 48):
    return grey
  shrinking = grey.shape[0] >= 48 and grey.shape[1] >= 48
  resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
  return np.asarray(Image.fromarray(grey).resize((48, 48), resample), dtype=np.uint8)


def load_face(source: Any, detect_faces: bool = False) -> np.ndarray:
  """A path, PIL image or array -> uint8 (48, 48) grey face. Raises FerJaxError naming the file."""
  if isinstance(source, np.ndarray):
    array = source
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
      array = array[..., 0] if array.shape[-1] == 1 else _to_grey(Image.fromarray(
          array.astype(np.uint8)))
    if array.ndim != 2:
      raise FerJaxError(f'an array face must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), '
                        f'not {source.shape}; pass a grey or RGB image.')
    if array.dtype != np.uint8:
      array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    grey = array
  elif isinstance(source, Image.Image):
    grey = _to_grey(source)
  else:
    path = os.fspath(source)
    if not os.path.isfile(path):
      raise FerJaxError(f'{path} does not exist; check the path.')
    if os.path.getsize(path) == 0:
      raise FerJaxError(f'{path} is empty (0 bytes); pass an image file.')
    try:
      with Image.open(path) as image:
        image.load()
        grey = _to_grey(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
      kind = 'truncated or damaged' if 'truncated' in str(e) else 'not an image PIL can read'
      raise FerJaxError(f'{path} is {kind} ({e}); pass a PNG, JPEG or other image file.') from None
  if detect_faces:
    face = largest_face(grey)
    if face is None:
      name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else 'the image'
      raise FerJaxError(f'{name} has no face OpenCV can find; crop it by hand or drop --detect_faces.')
    grey = face
  return to_face48(grey)


def read_image_folder(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """`<root>/<split>/<class name>/*.png|jpg` -> (uint8 (N, 48, 48, 1), int32 labels)."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) \
        if os.path.isdir(root) else []
    raise FerJaxError(f'{split_dir} does not exist; the image folder needs <split>/<class>/ '
                      f'sub-folders (found splits: {present or "none"}).')
  images, labels = [], []
  for class_name in sorted(os.listdir(split_dir)):
    class_dir = os.path.join(split_dir, class_name)
    if not os.path.isdir(class_dir):
      continue
    if class_name not in EMOTIONS:
      raise FerJaxError(f'{class_dir}: folder name {class_name!r} is not a class; name class '
                        f'folders {", ".join(EMOTIONS)}.')
    for name in sorted(os.listdir(class_dir)):
      if name.lower().endswith(IMAGE_EXTENSIONS):
        images.append(load_face(os.path.join(class_dir, name)))
        labels.append(EMOTIONS.index(class_name))
  if not images:
    raise FerJaxError(f'{split_dir} holds no images under its class folders; add .png or .jpg faces.')
  return np.stack(images)[..., None], np.array(labels, dtype=np.int32)
