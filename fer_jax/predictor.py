"""`Predictor`: a trained model loaded once, its forward pass compiled once, for faces in any images.

A photo's faces are found and framed as FER2013 frames its faces (fer_jax.faces.face_crops); a
small image is taken as a face crop already. Test-time augmentation averages the probabilities of
several views of each face (by default ten crops of a face crop, a face and its mirror image for a
face found in a photo: CROP_TTA, DETECTED_TTA); a temperature fitted on held-out faces
(fer_jax.evaluation.fit_temperature), one per TTA variant where the weights have them (averaging
views already softens the probabilities, so each variant needs its own), makes the confidences
calibrated. Batches are padded to one
of a few fixed sizes, so a stream of any batch sizes compiles a handful of times at most.

Two runtimes run the same network: the jitted JAX forward pass (`runtime='jax'`, what photos,
evaluation and serving use), and onnxruntime on the graph fer_jax.export writes
(`runtime='onnxruntime'`, EnhancedCNN48 only: same logits within 1e-6, no padding, and 1.5-3x
faster at the 1-10 faces a video frame holds on a 2-core CPU), which fer_jax.video uses.
"""
import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fer_jax import EMOTIONS, FerJaxError, augment, faces, models
from fer_jax.checkpoint import BEST, load_for_inference, read_temperature
from fer_jax.data.images import load_image, samples_to_uint8


def ten_crops(faces: np.ndarray, crop: int = 44) -> list[np.ndarray]:
  """Four corners and the centre, each resized back to 48x48, and their mirror images."""
  size = faces.shape[1]
  offsets = [(0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop),
             ((size - crop) // 2, (size - crop) // 2)]
  crops = []
  for y, x in offsets:
    patch = jnp.asarray(faces[:, y:y + crop, x:x + crop, :], jnp.float32)
    resized = jax.image.resize(patch, (len(faces), size, size, faces.shape[-1]), 'bilinear')
    crops.append(np.asarray(jnp.clip(jnp.round(resized), 0, 255), np.uint8))
  return crops + [c[:, :, ::-1] for c in crops]


TTA_VARIANTS: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
    'none': lambda faces: [faces],
    'flip': lambda faces: [faces, faces[:, :, ::-1]],
    'ten_crop': ten_crops,
}
# The TTA variant a Predictor made with tta=None uses, by how the face was framed. Face crops given
# directly are framed by their maker, as FER2013's are: ten crops score best there (on PublicTest
# 2.8 points above one view, 1.7 above flip). Faces a detector found in a photo are framed by
# fer_jax.faces.crop_face: on PublicTest faces placed in photos, flip scored within a point of ten
# crops (no significant difference) at a quarter of the cost, and none lower (docs/photos.md).
CROP_TTA = 'ten_crop'
DETECTED_TTA = 'flip'
RUNTIMES = ('jax', 'onnxruntime')  # what runs the forward pass (module docstring)


def as_faces(faces: Any) -> np.ndarray:
  """(N, 48, 48[, 1]) faces of any dtype -> uint8 (N, 48, 48, 1), each face by the depth rule of
  fer_jax.data.images (8-bit as is, floats in [0, 1] times 255, other ranges stretched)."""
  faces = np.asarray(faces)
  if faces.dtype != np.uint8:
    faces = np.stack([samples_to_uint8(face) for face in faces.reshape(-1, 48, 48)]) if faces.size \
        else faces.astype(np.uint8)
  return faces.reshape(-1, 48, 48, 1)


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
  """(views, N, classes) logits -> (N, classes): the mean over the views of
  softmax(logits / temperature)."""
  scaled = logits / temperature
  scaled = np.exp(scaled - scaled.max(-1, keepdims=True))
  return (scaled / scaled.sum(-1, keepdims=True)).mean(0)


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One face: its emotion, the confidence in it, every class's probability, and where the face
  is in the image, (x, y, w, h) in its pixels (None when the whole image was the face)."""
  emotion: str
  confidence: float
  probabilities: dict[str, float]
  box: tuple[int, int, int, int] | None = None


class Predictor:
  """A trained model, loaded once; `predict` takes paths, PIL images or arrays. `tta` names the
  TTA variant for every face; None (the default) picks it by the face's framing (`tta_for`)."""

  def __init__(self, model_config: dict[str, Any], variables: dict[str, Any],
               label_map: dict[str, str] | None = None, batch_size: int = 512,
               fold_batchnorm: bool = False, tta: str | None = None, temperature: float = 1.0,
               detector: str = 'blazeface', align: bool = True,
               temperatures: dict[str, float] | None = None):
    if tta is not None and tta not in TTA_VARIANTS:
      raise FerJaxError(f'--tta={tta!r} is unknown; use one of {", ".join(TTA_VARIANTS)}.')
    if not temperature > 0:
      raise FerJaxError(f'temperature={temperature} must be positive; 1 leaves the model\'s own '
                        'probabilities.')
    if detector not in faces.DETECTORS:
      raise FerJaxError(f'--detector={detector!r} is unknown; use one of {", ".join(faces.DETECTORS)}.')
    self.tta, self.temperature, self.detector, self.align = tta, float(temperature), detector, align
    # Per TTA variant; a variant not in it (and every variant when it is empty) uses `temperature`.
    self.temperatures = {k: float(v) for k, v in (temperatures or {}).items()}
    if not all(v > 0 for v in self.temperatures.values()):
      raise FerJaxError(f'temperatures={temperatures} must all be positive.')
    self.model_config = ml_collections.ConfigDict(model_config)
    if fold_batchnorm and self.model_config.name != 'cnn48':
      raise FerJaxError(f'fold_batchnorm=True serves only model.name=cnn48, not '
                        f'{self.model_config.name!r}; pass fold_batchnorm=False for this model.')
    self.model = models.create_model(self.model_config)
    # fold_batchnorm serves EnhancedCNN48 with its BatchNorms folded into the layers before them
    # (same outputs to float tolerance). Off by default: on a 2-core CPU it measured slower
    # (154 vs 252 img/s at batch 64; README, "Speed").
    self.fold_batchnorm = fold_batchnorm
    self._serving_model = (models.create_model(self.model_config, folded_batchnorm=True)
                           if self.fold_batchnorm else self.model)
    self.variables = variables
    self.labels = [label_map[str(i)] for i in range(len(label_map))] if label_map else list(EMOTIONS)
    self.batch_size = batch_size
    # Padded sizes: one face stays cheap (and its 2 or 10 TTA views), big batches stay fast
    # (inference measured 1.09x PyTorch at batch 64, 1.50x at 512).
    self.buckets = sorted({min(size, batch_size) for size in (1, 2, 10, 64, batch_size)})
    self._logits = jax.jit(self._forward)

  @property
  def runtimes(self) -> tuple[str, ...]:
    """The runtimes `logits` offers for this model: ('jax', 'onnxruntime') for EnhancedCNN48
    (the model fer_jax.export writes), ('jax',) otherwise."""
    return RUNTIMES if self.model_config.name == 'cnn48' else RUNTIMES[:1]

  @property
  def variables(self) -> dict[str, Any]:
    """{'params', 'batch_stats'} of the model as trained; assigning refreshes what is served."""
    return self._variables

  @variables.setter
  def variables(self, variables: dict[str, Any]) -> None:
    from fer_jax import batchnorm
    self._variables = jax.device_put(variables)
    self._serving_variables = (jax.jit(batchnorm.fold)(self._variables) if self.fold_batchnorm
                               else self._variables)
    self._session = None  # onnxruntime's, built from these variables at first use

  def _onnx_session(self) -> Any:
    """onnxruntime session of fer_jax.export.to_onnx(self), on every core without spin-waiting
    (threads that spin starve BlazeFace and decoding on a 2-core CPU)."""
    if self._session is None:
      import onnxruntime
      from fer_jax import export
      options = onnxruntime.SessionOptions()
      options.inter_op_num_threads = 1
      options.add_session_config_entry('session.intra_op.allow_spinning', '0')
      self._session = onnxruntime.InferenceSession(export.to_onnx(self), options,
                                                   providers=['CPUExecutionProvider'])
    return self._session

  def temperature_for(self, tta: str) -> float:
    """The temperature of TTA variant `tta`'s probabilities: its own where one was fitted
    (`temperatures`), else `temperature`."""
    return self.temperatures.get(tta, self.temperature)

  @classmethod
  def pretrained(cls, **kwargs) -> 'Predictor':
    """The model that ships with fer_jax (fer_jax/weights/, card in README "Model card"), with
    the temperatures fitted for it on PublicTest, one per TTA variant."""
    from fer_jax import pretrained
    variables, card = pretrained.load()
    kwargs.setdefault('temperature', card.get('temperature', 1.0))
    kwargs.setdefault('temperatures', card.get('temperatures'))
    return cls(card['model_config'], variables, card['label_map'], **kwargs)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = BEST, **kwargs) -> 'Predictor':
    """A checkpoint of a workdir, with the temperatures `evaluate --calibrate` fitted for it."""
    variables, meta = load_for_inference(workdir, checkpoint)
    temperature, temperatures = read_temperature(workdir, checkpoint)
    kwargs.setdefault('temperature', temperature)
    kwargs.setdefault('temperatures', temperatures)
    return cls(meta['model_config'], variables, meta['label_map'], **kwargs)

  def recalibrate_batch_stats(self, faces: np.ndarray, batch_size: int = 256) -> None:
    """Replaces the BatchNorm statistics by those of these clean faces (fer_jax.batchnorm)."""
    from fer_jax import batchnorm
    faces = as_faces(faces)
    batch_size = min(batch_size, len(faces))
    if batch_size < 1:
      raise FerJaxError('recalibrating BatchNorm needs at least one face; pass some Training faces.')
    stats = jax.jit(lambda v, f: batchnorm.recalibrate(self.model_config, v, f, batch_size))(
        self.variables, jnp.asarray(faces))
    self.variables = {**self.variables, 'batch_stats': stats}

  def _forward(self, variables, faces: jax.Array) -> jax.Array:
    return self._serving_model.apply(variables, augment.normalize(faces), train=False)

  def logits(self, faces: np.ndarray, runtime: str = 'jax') -> np.ndarray:
    """uint8 (N, 48, 48[, 1]) faces -> (N, classes) logits: in JAX in fixed-size padded batches,
    or in onnxruntime (one of `runtimes`; module docstring) in batches of any size."""
    faces = as_faces(faces)
    if runtime not in self.runtimes:
      raise FerJaxError(f'runtime={runtime!r} does not run model.name='
                        f'{self.model_config.name!r}; use one of {", ".join(self.runtimes)}.')
    if runtime == 'onnxruntime':
      return np.concatenate([np.zeros((0, len(self.labels)), np.float32)] + [
          self._onnx_session().run(['logits'], {'faces': faces[start:start + self.batch_size]})[0]
          for start in range(0, len(faces), self.batch_size)])
    out = []
    for start in range(0, len(faces), self.batch_size):
      chunk = faces[start:start + self.batch_size]
      size = next(b for b in self.buckets if b >= len(chunk))
      padded = np.zeros((size, 48, 48, 1), np.uint8)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(self._logits(self._serving_variables,
                                         jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

  def tta_for(self, detected: bool) -> str:
    """The TTA variant for faces a detector found (`detected`) or face crops given directly: the
    predictor's `tta`, else DETECTED_TTA or CROP_TTA."""
    return self.tta or (DETECTED_TTA if detected else CROP_TTA)

  def probabilities(self, faces: np.ndarray, tta: str | None = None, detected: bool = False,
                    runtime: str = 'jax') -> np.ndarray:
    """(N, classes) calibrated probabilities: the mean over the TTA variant's views (default
    `tta_for(detected)`: were the faces found by a detector?) of softmax(logits / temperature)
    at the variant's temperature (`temperature_for`), the logits from `runtime` (`logits`)."""
    faces = as_faces(faces)
    if not len(faces):
      return np.zeros((0, len(self.labels)), np.float32)
    tta = tta or self.tta_for(detected)
    views = TTA_VARIANTS[tta](faces)
    logits = self.logits(np.concatenate(views), runtime).reshape(len(views), len(faces), -1)
    return calibrated(logits, self.temperature_for(tta))

  def explain(self, faces: np.ndarray, targets: Any = None, method: str = 'grad_cam',
              **options: Any) -> np.ndarray:
    """float32 (N, 48, 48) saliency maps of uint8 (N, 48, 48[, 1]) faces (fer_jax.explain:
    Grad-CAM or integrated gradients, options as explain.explain takes them) for `targets`
    (default: the classes this predictor predicts, with its TTA), in batches of at most 64."""
    from fer_jax import explain
    faces = as_faces(faces)
    if targets is None:
      targets = self.probabilities(faces).argmax(-1)
    targets = np.broadcast_to(np.asarray(targets), (len(faces),))
    step = min(self.batch_size, 64)
    maps = [np.asarray(explain.explain(self.model, self.variables, faces[i:i + step],
                                       targets[i:i + step], method, **options))
            for i in range(0, len(faces), step)]
    return np.concatenate(maps) if maps else np.zeros((0, 48, 48), np.float32)

  def to_prediction(self, probabilities: np.ndarray) -> Prediction:
    best = int(np.argmax(probabilities))
    return Prediction(self.labels[best], float(probabilities[best]),
                      {name: float(p) for name, p in zip(self.labels, probabilities)})

  def _predictions(self, crops: np.ndarray, boxes: list) -> list[Prediction]:
    """A Prediction per crop; a crop with a box was found by the detector (tta_for)."""
    detected = np.array([box is not None for box in boxes], bool)
    probabilities = np.zeros((len(boxes), len(self.labels)), np.float32)
    for kind in (False, True):
      if (detected == kind).any():
        probabilities[detected == kind] = self.probabilities(np.asarray(crops)[detected == kind],
                                                             detected=kind)
    return [dataclasses.replace(self.to_prediction(p), box=box)
            for p, box in zip(probabilities, boxes)]

  def find_faces(self, image: Any, detect: bool | None = None) -> tuple[np.ndarray, list]:
    """(48x48 crops (N, 48, 48), their boxes in the image's pixels, None for a whole-image crop),
    by the rule of fer_jax.faces.face_crops (detect=None: photos searched, small images crops)."""
    return faces.face_crops(*load_image(image), detect, self.detector, self.align)

  def predict_faces(self, image: Any, detect: bool | None = None) -> list[Prediction]:
    """Every face in the image, largest first; [] when a photo has none."""
    return self._predictions(*self.find_faces(image, detect))

  def predict(self, images: Sequence[Any], detect: bool | None = None) -> list[Prediction]:
    """One prediction per image, of its largest face; an image with no face is an error."""
    crops, boxes = [], []
    for image in images:
      image_crops, image_boxes = self.find_faces(image, detect)
      if not len(image_crops):
        name = image if isinstance(image, (str, bytes)) or hasattr(image, '__fspath__') else 'an image'
        raise FerJaxError(f'no face found in {name} ({self.detector}); if it is a face crop '
                          'already, pass detect=False (--no_detect).')
      crops.append(image_crops[0])
      boxes.append(image_boxes[0])
    return self._predictions(np.stack(crops), boxes)


def load_and_predict(checkpoint: str, image: Any) -> tuple[str, float, dict[str, float]]:
  """(emotion, confidence, probabilities) for one image, from a workdir: the reference's API."""
  prediction = Predictor.from_workdir(checkpoint).predict([image])[0]
  return prediction.emotion, prediction.confidence, prediction.probabilities
