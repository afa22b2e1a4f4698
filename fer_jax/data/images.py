"""Any image file -> one 48x48 grey face, and image-folder datasets (`<split>/<class>/*.png`)."""
import os
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_jax import EMOTIONS, FerJaxError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def _normalised(image: Image.Image) -> Image.Image:
  """'L' or 'RGB' from any PIL mode, upright by its EXIF orientation: 16-bit scaled down, alpha
  composited on white, palette and CMYK converted."""
  image = ImageOps.exif_transpose(image)
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith('I;16') or values.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8))
  if image.mode == 'P':
    image = image.convert('RGBA')
  if image.mode in ('RGBA', 'LA', 'PA'):
    background = Image.new('RGBA', image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, image.convert('RGBA'))
  return image if image.mode in ('L', 'RGB') else image.convert('RGB')


def _to_grey(image: Image.Image) -> np.ndarray:
  """Grey uint8 (ITU-R 601 luma) from any PIL mode."""
  return np.asarray(_normalised(image).convert('L'), dtype=np.uint8)


def to_face48(grey: np.ndarray) -> np.ndarray:
  """Resize to 48x48: area averaging when shrinking, bilinear when enlarging."""
  if grey.shape == (48, 48):
    return grey
  shrinking = grey.shape[0] >= 48 and grey.shape[1] >= 48
  resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
  return np.asarray(Image.fromarray(grey).resize((48, 48), resample), dtype=np.uint8)


# Photos larger than this on a side are shrunk on loading (area averaging), so memory stays bounded
# for any photo; boxes are still reported in the photo's own pixels.
MAX_SIDE = 4096


def load_image(source: Any) -> tuple[np.ndarray, np.ndarray, float]:
  """A path, PIL image or array -> (uint8 RGB, uint8 grey, how many original pixels one of their
  pixels spans). Raises FerJaxError naming the file."""
  if isinstance(source, np.ndarray):
    array = source
    if array.dtype != np.uint8:
      array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if array.ndim == 2:
      return np.repeat(array[..., None], 3, -1), array, 1.0
    if array.ndim == 3 and array.shape[-1] in (3, 4):
      image = _normalised(Image.fromarray(array))
      return np.asarray(image.convert('RGB')), np.asarray(image.convert('L')), 1.0
    raise FerJaxError(f'an array face must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), '
                      f'not {source.shape}; pass a grey or RGB image.')
  if isinstance(source, Image.Image):
    return _shrunk(source, max(source.size))
  path = os.fspath(source)
  if not os.path.isfile(path):
    raise FerJaxError(f'{path} does not exist; check the path.')
  if os.path.getsize(path) == 0:
    raise FerJaxError(f'{path} is empty (0 bytes); pass an image file.')
  try:
    with Image.open(path) as image:
      original = max(image.size)
      image.draft('RGB', (MAX_SIDE, MAX_SIDE))  # JPEGs decode straight at a reduced size
      return _shrunk(image, original)
  except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
    kind = 'truncated or damaged' if 'truncated' in str(e).lower() else 'not an image PIL can read'
    raise FerJaxError(f'{path} is {kind} ({e}); pass a PNG, JPEG or other image file.') from None


def _shrunk(image: Image.Image, original_side: int) -> tuple[np.ndarray, np.ndarray, float]:
  image.load()
  image = _normalised(image)
  if max(image.size) > MAX_SIDE:
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
  grey = np.asarray(image.convert('L'), np.uint8)
  return np.asarray(image.convert('RGB'), np.uint8), grey, original_side / max(grey.shape)


def load_grey(source: Any) -> tuple[np.ndarray, float]:
  """(uint8 grey image, original pixels per pixel) of a path, PIL image or array."""
  _, grey, scale = load_image(source)
  return grey, scale


def load_face(source: Any) -> np.ndarray:
  """A face crop (path, PIL image or array) -> uint8 (48, 48) grey face, the whole image resized."""
  return to_face48(load_grey(source)[0])


def folder_classes(split_dir: str) -> list[str]:
  """The class folders of `<root>/<split>`: FER2013's names in FER2013's order when they are all
  FER2013 classes (so labels line up with FER2013 models), otherwise sorted by name."""
  names = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))
                 and not d.startswith('.'))
  if not names:
    raise FerJaxError(f'{split_dir} has no class folders; put each class\'s images in '
                      f'{split_dir}/<class name>/.')
  return [e for e in EMOTIONS if e in names] if set(names) <= set(EMOTIONS) else names


def read_image_folder(root: str, split: str, load: Callable[[str], np.ndarray] = load_face
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """`<root>/<split>/<class name>/*.png|jpg` -> (uint8 (N, 48, 48, 1), int32 labels, class names);
  `load` turns a file into a 48x48 face (default: the whole image; fer_jax.faces.dataset_face
  finds the face). Hidden files are skipped; any other non-image file is an error."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) \
        if os.path.isdir(root) else []
    raise FerJaxError(f'{split_dir} does not exist; the image folder needs <split>/<class>/ '
                      f'sub-folders (found splits: {present or "none"}).')
  classes = folder_classes(split_dir)
  images, labels = [], []
  for label, class_name in enumerate(classes):
    class_dir = os.path.join(split_dir, class_name)
    names = sorted(n for n in os.listdir(class_dir) if not n.startswith('.'))
    for name in names:
      path = os.path.join(class_dir, name)
      if not name.lower().endswith(IMAGE_EXTENSIONS):
        raise FerJaxError(f'{path} is not an image ({os.path.splitext(name)[1] or "no extension"}); '
                          f'move it out of the dataset (images: {", ".join(IMAGE_EXTENSIONS)}).')
      images.append(load(path))
      labels.append(label)
    if not names:
      raise FerJaxError(f'{class_dir} is empty; add images of {class_name!r} or remove the folder.')
  return np.stack(images)[..., None], np.array(labels, dtype=np.int32), classes
