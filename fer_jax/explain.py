"""Saliency maps: where on a 48x48 face a model's score for a class comes from.

Two methods, both built of jitted steps, both returning float32 maps of shape (batch, 48, 48),
one value per face pixel:

- Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization"): the activations A (h, w, k) of a conv layer weighted by the
  spatial mean of d logit / d A, summed over channels, passed through a ReLU and upsampled
  (bilinear) to 48x48. Coarse (3x3 at the last block of cnn48), non-negative, cheap: one forward
  and one backward pass.
- Integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks"):
  (x - x') times the mean gradient along the straight path from a baseline x' to the face x
  (midpoint rule, `steps` points). Signed, per pixel, in logits: the map sums to
  logit(x) - logit(x') (completeness) up to the integration error. Baselines: `black` (every
  pixel 0) or `blurred` (the face under a Gaussian blur, Sturmfels et al. 2020, Distill).

Either can be averaged over noisy copies of the face: SmoothGrad (Smilkov et al. 2017,
"SmoothGrad: removing noise by adding noise"), Gaussian noise of standard deviation
`noise` x 255 (the paper's noise level: a share of the input's range).

The score explained is the logit of the target class (default: the model's predicted class),
before the softmax, as in both papers. Activations are reached with `flax.linen.intercept_methods`,
so any Flax module works without changes: a layer is named by its module path
(`backbone/Conv_11`), and for cnn48 also by its block (`block1` ... `block5`, each block's output
after its pooling).
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import FerJaxError, augment

METHODS = ('grad_cam', 'integrated_gradients')
BASELINES = ('black', 'blurred')
FACE_SHAPE = (48, 48)


class ExplainError(FerJaxError):
  """A saliency request the model cannot answer (a class or layer it does not have, an unknown
  method or baseline, faces of the wrong shape); the message names the valid choices."""


def spatial_layers(model: nn.Module, variables: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  """{module path: output shape (h, w, channels)} of every module whose output is an image-shaped
  (batch, h, w, channels) array, in the order the forward pass calls them."""
  shapes: dict[str, tuple[int, ...]] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and getattr(out, 'ndim', 0) == 4:
      shapes.setdefault('/'.join(context.module.path), tuple(out.shape[1:]))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, *FACE_SHAPE, 1)), train=False), variables)
  return shapes


def layer_names(model: nn.Module, variables: dict[str, Any]) -> dict[str, str]:
  """{name a user may pass: module path}: every spatial module path, and for cnn48 `block1` ...
  `blockN`, each conv block's output (its Dropout2d, after the ReLU and the pooling)."""
  from fer_jax.models.cnn48 import EnhancedCNN48
  paths = list(spatial_layers(model, variables))
  names = {}
  if isinstance(model, EnhancedCNN48):
    outputs = [p for p in paths if p.startswith('backbone/Dropout_')]
    names = {f'block{i + 1}': path for i, path in enumerate(outputs)}
  return {**names, **{path: path for path in paths}}


def resolve_layer(model: nn.Module, variables: dict[str, Any], layer: str | None) -> str:
  """The module path of `layer` (None: the last spatial layer, for cnn48 block5's output)."""
  names = layer_names(model, variables)
  if not names:
    raise ExplainError(f'{type(model).__name__} has no layer with a (batch, h, w, channels) '
                       'output, so Grad-CAM has nothing to weigh; use '
                       'method="integrated_gradients".')
  if layer is None:
    return list(names.values())[-1]
  if layer not in names:
    raise ExplainError(f'layer={layer!r} is not a spatial layer of {type(model).__name__}; use one '
                       f'of {", ".join(names)}.')
  return names[layer]


def check_faces(faces: Any) -> jax.Array:
  """(N, 48, 48[, 1]) pixel values in [0, 255], any dtype -> float32 (N, 48, 48, 1)."""
  shape = np.shape(faces)
  if len(shape) not in (3, 4) or tuple(shape[1:3]) != FACE_SHAPE or (len(shape) == 4 and
                                                                    shape[3] != 1):
    raise ExplainError(f'faces of shape {shape} cannot be explained; pass grey 48x48 face crops, '
                       'shape (N, 48, 48) or (N, 48, 48, 1), pixel values 0-255.')
  return jnp.asarray(faces, jnp.float32).reshape(-1, *FACE_SHAPE, 1)


def check_targets(targets: Any, num_faces: int, num_classes: int) -> jax.Array:
  """Class indices, one per face (None or -1: the predicted class) -> int32 (N,)."""
  if targets is None:
    return jnp.full((num_faces,), -1, jnp.int32)
  targets = np.broadcast_to(np.asarray(targets), (num_faces,)) if np.ndim(targets) == 0 \
      else np.asarray(targets)
  if targets.shape != (num_faces,) or not np.issubdtype(targets.dtype, np.integer):
    raise ExplainError(f'targets must be one class index per face ({num_faces}), not '
                       f'{targets.tolist()!r}; or None for the predicted classes.')
  bad = [int(t) for t in targets if not -1 <= t < num_classes]
  if bad:
    raise ExplainError(f'target class {bad[0]} is out of range for a model with {num_classes} '
                       f'classes; use 0 to {num_classes - 1}, or None (or -1) for the predicted '
                       'class.')
  return jnp.asarray(targets, jnp.int32)


def _logits(model: nn.Module, variables: dict[str, Any], pixels: jax.Array,
            layer: str | None = None, delta: jax.Array | None = None) -> tuple[jax.Array, Any]:
  """(logits, activations of `layer` + delta) for float pixels (N, 48, 48, 1) in [0, 255]; delta
  is added to the layer's output, so d logits / d delta is d logits / d activations."""
  captured = {}

  def perturb(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if layer is not None and context.method_name == '__call__' and \
        '/'.join(context.module.path) == layer:
      out = captured['activations'] = out + delta
    return out

  with nn.intercept_methods(perturb):
    logits = model.apply(variables, augment.normalize(pixels / 255.0), train=False)
  return logits, captured.get('activations')


def _target_score(model, variables, pixels, targets, layer=None, delta=None):
  logits, activations = _logits(model, variables, pixels, layer, delta)
  return jnp.take_along_axis(logits, targets[:, None], axis=1).sum(), activations


def _grad_cam(model, variables, pixels, targets, layer):
  shape = jax.eval_shape(lambda p: _logits(model, variables, p, layer,
                                           jnp.zeros(()))[1], pixels).shape
  grads, activations = jax.grad(
      lambda d: _target_score(model, variables, pixels, targets, layer, d), has_aux=True)(
          jnp.zeros(shape, jnp.float32))
  weights = grads.mean(axis=(1, 2))                                     # (N, channels)
  cam = jax.nn.relu(jnp.einsum('nhwc,nc->nhw', activations, weights))   # (N, h, w)
  return jax.image.resize(cam, (len(pixels), *FACE_SHAPE), 'bilinear')


@functools.partial(jax.jit, static_argnames='model')
def _path_gradient(model, variables, pixels, baseline, targets, alpha):
  """d logit / d pixels at baseline + alpha (pixels - baseline): one point of the path."""
  return jax.grad(lambda p: _target_score(model, variables, p, targets)[0])(
      baseline + alpha * (pixels - baseline))


def blurred(pixels: jax.Array, sigma: float) -> jax.Array:
  """The faces under a Gaussian blur of `sigma` pixels (dm-pix; kernel 4 sigma + 1 wide, edges
  zero-padded as pix does, so the baseline darkens towards the border)."""
  import dm_pix
  return jax.vmap(lambda p: dm_pix.gaussian_blur(p, sigma, kernel_size=int(4 * sigma) | 1))(pixels)


@functools.partial(jax.jit, static_argnames=('model', 'layer'))
def _grad_cam_jit(model, variables, pixels, targets, layer):
  return _grad_cam(model, variables, pixels, targets, layer)


@functools.partial(jax.jit, static_argnames='model')
def _predicted(model, variables, pixels, targets):
  """targets with -1 replaced by the model's predicted class."""
  return jnp.where(targets < 0, jnp.argmax(_logits(model, variables, pixels)[0], axis=-1), targets)


@functools.partial(jax.jit, static_argnames=('baseline', 'blur_sigma'))
def _noisy_and_baseline(pixels, key, noise, *, baseline, blur_sigma):
  noisy = pixels + noise * 255.0 * jax.random.normal(key, pixels.shape)
  return noisy, jnp.zeros_like(noisy) if baseline == 'black' else blurred(noisy, blur_sigma)


def _maps(model, variables, pixels, targets, key, steps, samples, noise, *, method, layer,
          baseline, blur_sigma):
  """Predicted targets filled in, then the method averaged over `samples` noisy copies
  (samples=1, noise=0: the method itself). The loops over samples and path points run here,
  each point one jitted call: on a CPU that measured about 3x faster than a jax.lax.fori_loop
  around the same gradient, and steps and samples never recompile."""
  targets = _predicted(model, variables, pixels, targets)
  total = jnp.zeros((len(pixels), *FACE_SHAPE))
  for sample in range(samples):
    noisy, base = _noisy_and_baseline(pixels, jax.random.fold_in(key, sample), noise,
                                      baseline=baseline, blur_sigma=blur_sigma)
    if method == 'grad_cam':
      total = total + _grad_cam_jit(model, variables, noisy, targets, layer)
      continue
    gradient = jnp.zeros_like(pixels)
    for step in range(steps):
      gradient = gradient + _path_gradient(model, variables, noisy, base, targets,
                                           (step + 0.5) / steps)
    total = total + ((noisy - base) * gradient / steps)[..., 0]
  return total / samples


def explain(model: nn.Module, variables: dict[str, Any], faces: Any, targets: Any = None,
            method: str = 'grad_cam', layer: str | None = None, baseline: str = 'black',
            steps: int = 64, smoothgrad_samples: int = 0, noise: float = 0.15, seed: int = 0,
            blur_sigma: float = 4.0) -> jax.Array:
  """Saliency maps of a batch of faces for one target class each.

  Args:
    model, variables: a Flax classifier of (N, 48, 48, 1) faces and its {'params',
      'batch_stats'}; it is applied with train=False.
    faces: (N, 48, 48) or (N, 48, 48, 1) grey pixel values 0-255 (uint8 or float).
    targets: (N,) class indices, or one index for all; None or -1: the model's predicted class.
    method: 'grad_cam' (Selvaraju et al. 2017) or 'integrated_gradients' (Sundararajan et al.
      2017).
    layer: Grad-CAM's layer: a module path or, for cnn48, 'block1' ... 'block5'; None: the last
      spatial layer (cnn48: block5, 3x3x512).
    baseline: integrated gradients' baseline, 'black' (pixels 0) or 'blurred' (Gaussian blur of
      `blur_sigma` pixels).
    steps: integrated gradients' points along the path (midpoint rule); on the shipped model
      the completeness error measured about 2 % at 64 steps and 1 % at 256.
    smoothgrad_samples: average the map over this many noisy copies (SmoothGrad, Smilkov et al.
      2017); 0: no noise. noise: its standard deviation as a share of 255. seed: its draws.

  Returns:
    float32 (N, 48, 48) maps. Grad-CAM: non-negative, in logits per activation unit x activation
    (compare maps, not values across layers). Integrated gradients: signed, in logits; each map
    sums to logit(face) - logit(baseline).

  Raises:
    ExplainError: an unknown method, baseline or layer, a class index out of range, faces not
      48x48, steps or samples below 1.
  """
  if method not in METHODS:
    raise ExplainError(f'method={method!r} is unknown; use one of {", ".join(METHODS)}.')
  if baseline not in BASELINES:
    raise ExplainError(f'baseline={baseline!r} is unknown; use one of {", ".join(BASELINES)}.')
  if steps < 1 or smoothgrad_samples < 0:
    raise ExplainError(f'steps={steps} and smoothgrad_samples={smoothgrad_samples} must be at '
                       'least 1 and 0; 256 steps keep completeness within about 1 %.')
  pixels = check_faces(faces)
  num_classes = jax.eval_shape(lambda p: _logits(model, variables, p)[0], pixels[:1]).shape[-1]
  targets = check_targets(targets, len(pixels), num_classes)
  layer = resolve_layer(model, variables, layer) if method == 'grad_cam' else None
  return _maps(model, variables, pixels, targets, jax.random.key(seed), steps,
               max(smoothgrad_samples, 1), noise if smoothgrad_samples else 0.0, method=method,
               layer=layer, baseline=baseline if method == 'integrated_gradients' else 'black',
               blur_sigma=float(blur_sigma))


def grad_cam(model: nn.Module, variables: dict[str, Any], faces: Any, targets: Any = None,
             layer: str | None = None) -> jax.Array:
  """Grad-CAM maps (N, 48, 48) (Selvaraju et al. 2017); `explain` with method='grad_cam'."""
  return explain(model, variables, faces, targets, 'grad_cam', layer=layer)


def integrated_gradients(model: nn.Module, variables: dict[str, Any], faces: Any,
                         targets: Any = None, baseline: str = 'black',
                         steps: int = 64) -> jax.Array:
  """Integrated gradients (N, 48, 48) in logits (Sundararajan et al. 2017); `explain` with
  method='integrated_gradients'."""
  return explain(model, variables, faces, targets, 'integrated_gradients', baseline=baseline,
                 steps=steps)


def target_logits(model: nn.Module, variables: dict[str, Any], faces: Any,
                  targets: Any) -> np.ndarray:
  """(N,) the logit of each face's target class: what the maps explain (for completeness checks)."""
  logits = np.asarray(_forward(model, variables, check_faces(faces)))
  return logits[np.arange(len(logits)), np.asarray(targets)]


@functools.partial(jax.jit, static_argnames='model')
def _forward(model, variables, pixels):
  return _logits(model, variables, pixels)[0]
