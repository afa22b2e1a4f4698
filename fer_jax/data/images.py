"""The one image reader (any file, PIL image or array -> 8-bit grey and RGB) and the one folder walk,
used by predict, evaluate, training on image folders and the server alike.

Sample depth: 8-bit images are read as they are. Integer samples of more bits are divided by the
largest value of their bit depth: the depth the file states (TIFF BitsPerSample), else the
smallest of 8, 10, 12, 14, 16, 24 or 32 bits that holds the image's largest value (so 16-bit
photos use the full 0-65535 range, and 12-bit sensor data stored in 16 bits is not left dark),
never more than the type holds (2**31 - 1 for signed 32-bit samples).
Float samples in [0, 1] are multiplied by 255; floats outside it, and integers below 0, are
stretched min-max. Arrays passed to Predictor follow the same rule by dtype.

Size: JPEGs larger than MAX_SIDE decode straight at a reduced size (Pillow's draft mode); any
image is then shrunk to MAX_SIDE by area averaging, so boxes are still reported in the photo's
own pixels. An image that would decode to more than MAX_DECODED_PIXELS is refused in one
sentence, whatever its format (about 0.5 GB of RGB while loading).
"""
import contextlib
import io
import os
import threading
import warnings
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_jax import EMOTIONS, FerJaxError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.heic',
                    '.heif', '.avif')
# Image formats people keep beside their photos that no reader here decodes: named when skipped.
UNREADABLE_IMAGE_EXTENSIONS = ('.cr2', '.cr3', '.nef', '.arw', '.dng', '.raf', '.orf', '.rw2',
                               '.psd', '.svg', '.jxl', '.ico', '.eps')
# Folder entries that are never data: hidden files and folders (macOS `._photo.png` forks,
# `.DS_Store`, `.ipynb_checkpoints`) and the folder macOS zips add.
_SKIPPED_FOLDERS = ('__MACOSX',)
INTEGER_DEPTHS = (8, 10, 12, 14, 16, 24, 32)


def is_hidden(name: str) -> bool:
  return name.startswith('.') or name in _SKIPPED_FOLDERS


def walk_files(folder: str, recursive: bool = True) -> Iterator[str]:
  """The files under `folder`, sorted, hidden entries skipped at every level (the one folder walk
  of predict, evaluate and image-folder datasets)."""
  for entry in sorted(os.scandir(folder), key=lambda e: e.name):
    if is_hidden(entry.name):
      continue
    if entry.is_dir():
      if recursive:
        yield from walk_files(entry.path)
    else:
      yield entry.path


def is_image_file(path: str) -> bool:
  return path.lower().endswith(IMAGE_EXTENSIONS)


def samples_to_uint8(values: np.ndarray, stated_bits: int | None = None) -> np.ndarray:
  """Any integer or float samples -> uint8 by the module docstring's depth rule."""
  values = np.asarray(values)
  if values.dtype == np.uint8:
    return values
  if values.dtype == bool:
    return values.astype(np.uint8) * 255
  if values.size == 0:
    return values.astype(np.uint8)
  low, high = float(np.min(values)), float(np.max(values))
  if np.issubdtype(values.dtype, np.integer) and low >= 0:
    bits = stated_bits or next((b for b in INTEGER_DEPTHS if high < 2 ** b), 64)
    top = min(2 ** bits - 1, int(np.iinfo(values.dtype).max))
    scaled = values.astype(np.float32 if bits <= 16 else np.float64) * (255.0 / top)
  elif np.issubdtype(values.dtype, np.floating) and 0.0 <= low and high <= 1.0:
    scaled = values.astype(np.float64) * 255.0
  elif not np.isfinite(low) or not np.isfinite(high):
    raise FerJaxError('the image has samples that are not finite (NaN or infinity); pass an '
                      'image of finite values.')
  elif high > low:
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
  else:
    scaled = np.full(values.shape, np.clip(low, 0, 255))
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _tiff_tag(image: Image.Image, tag: int) -> int | None:
  value = getattr(image, 'tag_v2', {}).get(tag)
  value = value[0] if isinstance(value, tuple) and value else value
  return value if isinstance(value, int) else None


def _samples(image: Image.Image, tagged: Image.Image) -> tuple[np.ndarray, int | None]:
  """A grey image of more than 8 bits as (its samples, the significant bits a TIFF states when
  fewer than its container holds). Pillow holds unsigned 32-bit TIFF samples in a signed mode; they
  are read back as unsigned (TIFF SampleFormat 1). `tagged` is the image as opened, with its
  TIFF tags."""
  values = np.asarray(image)
  bits = _tiff_tag(tagged, 258)
  if values.dtype == np.int32 and bits == 32 and _tiff_tag(tagged, 339) in (None, 1):
    values = values.view(np.uint32)
  return values, bits if bits is not None and 8 <= bits < 32 else None


def _normalised(image: Image.Image) -> Image.Image:
  """'L' or 'RGB' from any PIL mode, upright by its EXIF orientation: more than 8 bits per sample
  mapped by the depth rule, alpha composited on white, palette and CMYK converted."""
  opened, image = image, ImageOps.exif_transpose(image)
  if image.mode.startswith(('I', 'F')):  # 16-bit, 32-bit integer and float grey
    return Image.fromarray(samples_to_uint8(*_samples(image, opened)))
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
# The most pixels decoded at once (after a JPEG's draft reduction): 150 MP, ~0.5 GB as RGB.
MAX_DECODED_PIXELS = 150_000_000
# Pillow's decompression-bomb limit is a module global; it is lifted only while a file is opened
# (MAX_DECODED_PIXELS is the bound here), one file at a time.
_PIL_LIMIT = threading.Lock()


@contextlib.contextmanager
def _without_pil_pixel_limit() -> Iterator[None]:
  with _PIL_LIMIT:
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
      yield
    finally:
      Image.MAX_IMAGE_PIXELS = limit


def _register_heif() -> None:
  """HEIC / HEIF (iPhone photos) through pillow-heif, when installed."""
  with contextlib.suppress(ImportError):
    import pillow_heif
    pillow_heif.register_heif_opener()


def load_image(source: Any) -> tuple[np.ndarray, np.ndarray, float]:
  """A path, the bytes of an image file (an upload), PIL image or array -> (uint8 RGB, uint8
  grey, how many original pixels one of their pixels spans). Arrays are (H, W), (H, W, 1),
  (H, W, 3) or (H, W, 4) of any integer or float dtype (the module docstring's depth rule).
  Raises FerJaxError naming the file ("the uploaded file" for bytes)."""
  if isinstance(source, np.ndarray):
    if source.ndim == 3 and source.shape[-1] == 1:
      source = source[..., 0]
    if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[-1] not in (3, 4)):
      raise FerJaxError(f'an array face must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), '
                        f'not {source.shape}; pass a grey or RGB image.')
    array = samples_to_uint8(source)
    if array.ndim == 2:
      return np.repeat(array[..., None], 3, -1), array, 1.0
    image = _normalised(Image.fromarray(array))
    return np.asarray(image.convert('RGB')), np.asarray(image.convert('L')), 1.0
  if isinstance(source, Image.Image):
    return _shrunk(source, max(source.size))
  if isinstance(source, (bytes, bytearray, memoryview)):
    if not len(source):
      raise FerJaxError('the uploaded file is empty (0 bytes); send an image file.')
    return _decoded('the uploaded file', io.BytesIO(source))
  path = os.fspath(source)
  if not os.path.isfile(path):
    raise FerJaxError(f'{path} does not exist; check the path.')
  if os.path.getsize(path) == 0:
    raise FerJaxError(f'{path} is empty (0 bytes); pass an image file.')
  if path.lower().endswith(UNREADABLE_IMAGE_EXTENSIONS):
    raise FerJaxError(f'{path}: {os.path.splitext(path)[1]} images are not read; export it as JPEG '
                      'or PNG.')
  return _decoded(path, path)


def _decoded(name: str, file: Any) -> tuple[np.ndarray, np.ndarray, float]:
  """load_image of a path or a binary file object, within the module docstring's size bounds."""
  heic = name.lower().endswith(('.heic', '.heif'))
  if heic or not isinstance(file, str):  # an upload may be a HEIC photo under any name
    _register_heif()
  # Pillow's warnings (its size limit, which MAX_DECODED_PIXELS replaces; corrupt EXIF) say
  # nothing a user can act on; what matters becomes an error sentence.
  try:
    with _without_pil_pixel_limit(), warnings.catch_warnings():
      warnings.simplefilter('ignore')
      image = Image.open(file)
    with image, warnings.catch_warnings():
      warnings.simplefilter('ignore')
      width, height = image.size
      image.draft('RGB', (MAX_SIDE, MAX_SIDE))  # JPEGs decode straight at a reduced size
      decoded = image.size[0] * image.size[1]
      if decoded > MAX_DECODED_PIXELS:
        raise FerJaxError(
            f'{name} is {width}x{height} pixels ({decoded / 1e6:.0f} MP to decode), more than the '
            f'{MAX_DECODED_PIXELS / 1e6:.0f} MP fer_jax decodes at once; save it as a JPEG '
            '(decoded at a reduced size) or shrink it first.')
      return _shrunk(image, max(width, height))
  except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
    kind = 'truncated or damaged' if 'truncated' in str(e).lower() else 'not an image PIL can read'
    # An upload's own reason names only Pillow's in-memory file object.
    reason = '' if isinstance(e, UnidentifiedImageError) and not isinstance(file, str) else f' ({e})'
    hint = ' (HEIC needs pip install pillow-heif)' if heic else ''
    raise FerJaxError(f'{name} is {kind}{reason}{hint}; pass a PNG, JPEG or other image file.'
                      ) from None


def _shrunk(image: Image.Image, original_side: int) -> tuple[np.ndarray, np.ndarray, float]:
  image.load()
  if image.mode.startswith(('I', 'F')) and max(image.size) > MAX_SIDE:
    image = image.copy()  # more than 8 bits a sample: shrunk before the depth rule, in less memory
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
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


def skipped_line(path: str) -> str:
  """The one line a folder walk gives a file it does not read."""
  if path.lower().endswith(UNREADABLE_IMAGE_EXTENSIONS):
    return (f'skipped {path}: {os.path.splitext(path)[1]} images are not read; export it as JPEG '
            'or PNG.')
  return f'skipped {path}: not an image ({os.path.splitext(path)[1] or "no extension"}).'


def folder_classes(split_dir: str) -> list[str]:
  """The class folders of `<root>/<split>`: FER2013's names in FER2013's order when they are all
  FER2013 classes (so labels line up with FER2013 models), otherwise sorted by name."""
  names = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))
                 and not is_hidden(d))
  if not names:
    raise FerJaxError(f'{split_dir} has no class folders; put each class\'s images in '
                      f'{split_dir}/<class name>/.')
  return [e for e in EMOTIONS if e in names] if set(names) <= set(EMOTIONS) else names


def read_image_folder(root: str, split: str, load: Callable[[str], np.ndarray] = load_face
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """`<root>/<split>/<class name>/**/*.png|jpg|...` -> (uint8 (N, 48, 48, 1), int32 labels, class
  names); `load` turns a file into a 48x48 face (default: the whole image; fer_jax.faces.dataset_face
  finds the face). Hidden entries are skipped; any other file that is not an image is an error
  (a label folder with something else in it is likely mislabelled)."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                     and not is_hidden(d)) if os.path.isdir(root) else []
    raise FerJaxError(f'{split_dir} does not exist; the image folder needs <split>/<class>/ '
                      f'sub-folders (found splits: {present or "none"}).')
  classes = folder_classes(split_dir)
  images, labels = [], []
  for label, class_name in enumerate(classes):
    class_dir = os.path.join(split_dir, class_name)
    paths = list(walk_files(class_dir))
    for path in paths:
      if not is_image_file(path):
        raise FerJaxError(f'{path} is not an image ({os.path.splitext(path)[1] or "no extension"}); '
                          f'move it out of the dataset (images: {", ".join(IMAGE_EXTENSIONS)}).')
      images.append(load(path))
      labels.append(label)
    if not paths:
      raise FerJaxError(f'{class_dir} is empty; add images of {class_name!r} or remove the folder.')
  return np.stack(images)[..., None], np.array(labels, dtype=np.int32), classes
