"""`Predictor`: a trained model loaded once, its forward pass compiled once, for any face images.

Batches are padded to one of four sizes (1, 8, 64, batch_size = 512), so a stream of any batch
sizes compiles at most four times.
"""
import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fer_jax import EMOTIONS, FerJaxError, augment, models
from fer_jax.checkpoint import BEST, load_for_inference
from fer_jax.data.images import load_face


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
    # (same outputs to float tolerance). Off by default: on a 2-core CPU it measured slower
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
  """(emotion, confidence, probabilities) for one image, from a workdir: the reference's API."""
  prediction = Predictor.from_workdir(checkpoint).predict([image])[0]
  return prediction.emotion, prediction.confidence, prediction.probabilities
