"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=4: one train step on a 4-device mesh
against the same step on one device. Prints 'devices=N match=BOOL'.

Plain SGD stands in for Adam: Adam's first step is lr * sign(grad), which turns the float noise of
the conv biases' gradients (cancelled by the BatchNorm after them, so ~1e-8) into +-lr jumps; SGD
shows the gradients themselves, which is what data parallelism must preserve: the whole update (all leaves
but those biases) must agree as closely as the same step on one device with the batch's faces in
another order agrees with itself (float summation order alone; at least 1e-4 relative, and within
3x that noise: on some CPUs reordering alone moves the early layers' update by ~3e-3, since each
BatchNorm's backward pass subtracts nearly equal terms), the loss, accuracy and BatchNorm statistics
to float precision. Two settings: no dropout and no augmentation; the reference's dropout with flips.
"""
import functools

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from configs import enhanced
from fer_jax import augment, models, parallel, train


def one_step_each(dropout_rate: float, augment_steps: str):
  config = enhanced.get_config()
  config.model.dropout_rate = dropout_rate
  config.augment.steps = augment_steps  # the full pipeline's own sharding check: augment_matches()
  model = models.create_model(config.model)
  state = train.create_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1))
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 48, 48, 1), dtype=np.uint8),
           'label': rng.integers(0, 7, 16).astype(np.int32)}
  step = functools.partial(train.train_step, augment_fn=augment.make_train_augment(config.augment, 10))
  reordered = {key: value[::-1] for key, value in batch.items()}
  one_device = Mesh(np.array(jax.local_devices()[:1]), ('data',))
  results = []
  for mesh, faces in ((parallel.make_mesh(), batch), (one_device, batch), (one_device, reordered)):
    p_step = parallel.data_parallel(step, mesh, donate_state=False)
    new_state, sums = p_step(parallel.replicate(state, mesh), parallel.shard_batch(faces, mesh))
    updates = jax.tree_util.tree_map(lambda new, old: new - old, new_state.params, state.params)
    results.append(jax.device_get((updates, new_state.batch_stats, sums)))
  return results


def _is_bn_cancelled_bias(path) -> bool:
  names = [str(getattr(k, 'key', k)) for k in path]
  return names[-1] == 'bias' and names[-2].split('_')[0] in ('Conv', 'Dense') and names[-2] != 'Dense_4'


def relative_error(updates, reference) -> float:
  kept = [(a, b) for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(updates),
                                         jax.tree_util.tree_leaves(reference))
          if not _is_bn_cancelled_bias(path)]
  difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in kept))
  return float(difference / np.sqrt(sum(np.sum(b ** 2) for _, b in kept)))


def augment_matches() -> bool:
  """The 11-step augmentation gives the same faces with the batch split over the mesh."""
  config = enhanced.get_config()
  augment_fn = augment.make_train_augment(config.augment, 10)
  faces = np.random.default_rng(1).integers(0, 256, (16, 48, 48, 1), dtype=np.uint8)
  outputs = []
  for mesh in (parallel.make_mesh(), Mesh(np.array(jax.local_devices()[:1]), ('data',))):
    run = jax.jit(augment_fn, in_shardings=(parallel.batch_sharded(mesh), parallel.replicated(mesh),
                                            parallel.replicated(mesh)))
    outputs.append(np.asarray(run(faces, jax.random.key(0), np.int32(3))))
  error = np.abs(outputs[0] - outputs[1]).max()
  if error > 1e-4:
    print(f'augmentation differs by {error:.2e} across meshes')
  return error <= 1e-4


def main() -> None:
  ok = augment_matches()
  noise = None
  for dropout_rate, augment_steps in ((0.0, ''), (0.5, 'flip')):
    (upd_n, stats_n, sums_n), (upd_1, stats_1, sums_1), (upd_r, _, _) = one_step_each(
        dropout_rate, augment_steps)
    ok &= bool(np.isclose(sums_n['loss_sum'], sums_1['loss_sum'], rtol=1e-5))
    ok &= int(sums_n['correct']) == int(sums_1['correct'])
    ok &= all(np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in
              zip(jax.tree_util.tree_leaves(stats_n), jax.tree_util.tree_leaves(stats_1)))
    if noise is None:  # reordering is the same step only without dropout masks and augmentation
      noise = relative_error(upd_r, upd_1)
    error = relative_error(upd_n, upd_1)
    print(f'dropout={dropout_rate}: relative error of the whole update {error:.2e} '
          f'(one device, the batch reordered, no dropout: {noise:.2e})')
    ok &= bool(error <= max(1e-4, 3 * noise))
  print(f'devices={len(jax.local_devices())} match={ok}')


if __name__ == '__main__':
  main()
