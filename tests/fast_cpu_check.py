"""One train step and one evaluation of the reference's model; writes the update, loss and logits.

tests/test_bench.py runs it with FER_JAX_FAST_CPU=1 and =0 (the XLA flag fer_jax sets by default
and jaxlib's default convolutions) and compares. SGD rather than Adam, for the reason given in
tests/parallel_step_check.py: Adam's first steps turn float noise into sign flips of +-lr. One step:
training itself amplifies float-level differences from one step to the next (measured on this
tiny random batch: losses agree to 1e-6 at step 1, 1e-4 at step 2, 1e-2 at step 3, with either
flag), so several steps would test the amplification, not the flag.
"""
import functools
import sys

from fer_jax import cli

cli.configure_cpu_backend(True)  # a no-op when FER_JAX_FAST_CPU=0

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import enhanced  # noqa: E402
from fer_jax import augment, models, optim, train  # noqa: E402


def main(out: str) -> None:
  config = enhanced.get_config()
  config.optimizer, config.backbone_lr, config.head_lr = 'sgd', 0.01, 0.01
  config.augment.steps = 'flip'
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fns(config, 1))
  state = train.create_train_state(jax.random.PRNGKey(0), model, tx)
  rng = np.random.default_rng(0)
  split = {'image': rng.integers(0, 256, (48, 48, 48, 1), dtype=np.uint8),
           'label': rng.integers(0, 7, 48).astype(np.int32)}
  step_fn = functools.partial(train.train_step,
                              augment_fn=augment.make_train_augment(config.augment, 3))
  initial = jax.device_get(state.params)
  state, sums = jax.jit(functools.partial(train.train_steps, step_fn=step_fn))(
      state, split, train.epoch_batches(0, 1, 48, 16)[:1])
  logits = jax.jit(lambda v, x: model.apply(v, augment.normalize(x), train=False))(
      {'params': state.params, 'batch_stats': state.batch_stats}, split['image'])
  updates = jax.tree_util.tree_map(lambda new, old: new - old, jax.device_get(state.params), initial)
  flat = flax.traverse_util.flatten_dict(updates, sep='/')
  np.savez(out, loss_sum=np.asarray(sums['loss_sum']), logits=np.asarray(logits), xla_flags=np.asarray(
      __import__('os').environ.get('XLA_FLAGS', '')), **flat)


if __name__ == '__main__':
  main(sys.argv[1])
