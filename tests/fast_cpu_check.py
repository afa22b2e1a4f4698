"""Three train steps of the seed's model; writes the parameters and the loss to an .npz.

tests/test_bench.py runs it with FER_JAX_FAST_CPU=1 and =0 (the XLA flag fer_jax sets by default
and jaxlib's default convolutions) and compares. SGD rather than Adam, for the reason given in
tests/parallel_step_check.py: Adam's first steps turn float noise into sign flips of +-lr.
"""
import functools
import sys

from fer_jax import parallel

parallel.configure_cpu_backend(True)  # a no-op when FER_JAX_FAST_CPU=0

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import enhanced  # noqa: E402
from fer_jax import augment, data, models, optim, train  # noqa: E402


def main(out: str) -> None:
  config = enhanced.get_config()
  config.optimizer, config.backbone_lr, config.head_lr = 'sgd', 0.01, 0.01
  config.augment.steps = 'flip,rotate'
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fns(config, 3))
  state = train.create_train_state(jax.random.PRNGKey(0), model, tx)
  images, labels = data.generated_faces(48, seed=0)
  split = {'image': images, 'label': labels.astype(np.int32)}
  step_fn = functools.partial(train.train_step,
                              augment_fn=augment.make_train_augment(config.augment, 3))
  state, sums = jax.jit(functools.partial(train.train_steps, step_fn=step_fn))(
      state, split, train.epoch_batches(0, 1, 48, 16))
  flat = flax.traverse_util.flatten_dict(jax.device_get(state.params), sep='/')
  np.savez(out, loss_sum=np.asarray(sums['loss_sum']), xla_flags=np.asarray(
      __import__('os').environ.get('XLA_FLAGS', '')), **flat)


if __name__ == '__main__':
  main(sys.argv[1])
