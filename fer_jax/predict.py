"""An emotion, a confidence and the 7 probabilities for any face image.

    python -m fer_jax.predict --workdir runs/enhanced face1.jpg photos/ [--json] [--detect-faces]

`Predictor` loads a checkpoint once and keeps its compiled forward pass warm; batches are padded
to one of four sizes (1, 8, 64, batch_size = 512), so a stream of any batch sizes compiles at most
four times.
"""
import dataclasses
import json
import os
import sys
from typing import Any, Iterable, Sequence

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fer_jax import EMOTIONS, FerJaxError, augment, models, parallel
from fer_jax.checkpoint import BEST, load_for_inference
from fer_jax.data.images import IMAGE_EXTENSIONS, load_face


@dataclasses.dataclass(frozen=True)
class Prediction:
  emotion: str
  confidence: float
  probabilities: dict[str, float]


class Predictor:
  """A trained model, loaded once; `predict` takes paths, PIL images or arrays."""

  def __init__(self, model_config: dict[str, Any], variables: dict[str, Any],
               label_map: dict[str, str] | None = None, batch_size: int = 512,
               fold_batchnorm: bool = False):
    self.model_config = ml_collections.ConfigDict(model_config)
    if fold_batchnorm and self.model_config.name != 'cnn48':
      raise FerJaxError(f'fold_batchnorm=True serves only model.name=cnn48, not '
                        f'{self.model_config.name!r}; pass fold_batchnorm=False for this model.')
    self.model = models.create_model(self.model_config)
    # fold_batchnorm serves EnhancedCNN48 with its BatchNorms folded into the layers before them
    # (same outputs to float tolerance). Off by default: on this project's CPU it measured slower
    # (154 vs 252 img/s at batch 64; README, "Speed").
    self.fold_batchnorm = fold_batchnorm
    self._serving_model = (models.create_model(self.model_config, folded_batchnorm=True)
                           if self.fold_batchnorm else self.model)
    self.variables = variables
    self.labels = [label_map[str(i)] for i in range(len(label_map))] if label_map else list(EMOTIONS)
    self.batch_size = batch_size
    # Padded sizes: one face stays cheap, big batches stay fast (inference measured 1.09x PyTorch
    # at batch 64, 1.50x at 512), at most four compilations.
    self.buckets = sorted({min(size, batch_size) for size in (1, 8, 64, batch_size)})
    self._probabilities = jax.jit(self._forward)

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

  @classmethod
  def pretrained(cls, **kwargs) -> 'Predictor':
    """The model that ships with fer_jax (fer_jax/weights/, card in README "Model card")."""
    from fer_jax import pretrained
    variables, card = pretrained.load()
    return cls(card['model_config'], variables, card['label_map'], **kwargs)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = BEST, **kwargs) -> 'Predictor':
    variables, meta = load_for_inference(workdir, checkpoint)
    return cls(meta['model_config'], variables, meta.get('label_map'), **kwargs)

  def recalibrate_batch_stats(self, faces: np.ndarray, batch_size: int = 256) -> None:
    """Replaces the BatchNorm statistics by those of these clean faces (fer_jax.batchnorm)."""
    from fer_jax import batchnorm
    faces = np.asarray(faces, np.uint8).reshape(-1, 48, 48, 1)
    batch_size = min(batch_size, len(faces))
    if batch_size < 1:
      raise FerJaxError('recalibrating BatchNorm needs at least one face; pass some Training faces.')
    stats = jax.jit(lambda v, f: batchnorm.recalibrate(self.model_config, v, f, batch_size))(
        self.variables, jnp.asarray(faces))
    self.variables = {**self.variables, 'batch_stats': stats}

  def _forward(self, variables, faces: jax.Array) -> jax.Array:
    logits = self._serving_model.apply(variables, augment.normalize(faces), train=False)
    return jax.nn.softmax(logits, axis=-1)

  def probabilities(self, faces: np.ndarray) -> np.ndarray:
    """uint8 (N, 48, 48[, 1]) faces -> (N, classes) probabilities, in fixed-size padded batches."""
    faces = np.asarray(faces, np.uint8).reshape(-1, 48, 48, 1)
    out = []
    for start in range(0, len(faces), self.batch_size):
      chunk = faces[start:start + self.batch_size]
      size = next(b for b in self.buckets if b >= len(chunk))
      padded = np.zeros((size, 48, 48, 1), np.uint8)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(self._probabilities(self._serving_variables,
                                                jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

  def to_prediction(self, probabilities: np.ndarray) -> Prediction:
    best = int(np.argmax(probabilities))
    return Prediction(self.labels[best], float(probabilities[best]),
                      {name: float(p) for name, p in zip(self.labels, probabilities)})

  def predict(self, images: Sequence[Any], detect_faces: bool = False) -> list[Prediction]:
    faces = np.stack([load_face(image, detect_faces) for image in images])
    return [self.to_prediction(p) for p in self.probabilities(faces)]


def load_and_predict(checkpoint: str, image: Any) -> tuple[str, float, dict[str, float]]:
  """The seed's API: (emotion, confidence, probabilities) for one image, from a workdir."""
  prediction = Predictor.from_workdir(checkpoint).predict([image])[0]
  return prediction.emotion, prediction.confidence, prediction.probabilities


def expand_inputs(paths: Iterable[str]) -> list[str]:
  """Files as given; folders replaced by the images inside them (sorted, recursive)."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      for folder, _, names in sorted(os.walk(path)):
        files += [os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    else:
      files.append(path)
  return files


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a program so importing stays side-effect free."""
  flags.DEFINE_string('workdir', None, 'Training workdir holding checkpoints/.')
  flags.DEFINE_string('checkpoint', BEST, '"best", "latest" or a step number.')
  flags.DEFINE_bool('pretrained', False, 'Use the weights that ship with fer_jax instead of a workdir.')
  flags.DEFINE_bool('json', False, 'One JSON line per file instead of a table.')
  flags.DEFINE_bool('detect_faces', False, 'Crop the largest face first (OpenCV Haar cascade).')


def run(files: list[str], predictor: Predictor, as_json: bool, detect_faces: bool) -> int:
  """Classifies each file on its own so one bad file does not stop the rest; returns #failures."""
  failures = 0
  if not as_json:
    print(f'{"file":40s} {"emotion":9s} {"conf":>5s}  ' + ' '.join(f'{n[:7]:>7s}' for n in predictor.labels))
  for path in files:
    try:
      prediction = predictor.predict([path], detect_faces)[0]
    except FerJaxError as e:
      failures += 1
      print(json.dumps({'file': path, 'error': str(e)}) if as_json else f'{path:40s} error: {e}')
      continue
    if as_json:
      print(json.dumps({'file': path, 'emotion': prediction.emotion,
                        'confidence': round(prediction.confidence, 6),
                        'probabilities': {k: round(v, 6) for k, v in prediction.probabilities.items()}}))
    else:
      print(f'{path:40s} {prediction.emotion:9s} {prediction.confidence:5.3f}  '
            + ' '.join(f'{p:7.3f}' for p in prediction.probabilities.values()))
  return failures


def main(argv: list[str]) -> None:
  files = expand_inputs(argv[1:])
  if not files:
    raise app.UsageError('name at least one image file or folder.')
  parallel.configure_cpu_backend()  # before JAX starts (README, "Speed")
  if bool(FLAGS.workdir) == FLAGS.pretrained:
    raise app.UsageError('give either --workdir (a training workdir) or --pretrained.')
  try:
    predictor = (Predictor.pretrained() if FLAGS.pretrained else
                 Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint))
  except FerJaxError as e:
    sys.exit(f'error: {e}')
  failures = run(files, predictor, FLAGS.json, FLAGS.detect_faces)
  if failures:
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
