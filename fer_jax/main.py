"""Entry point: `python -m fer_jax.main --config configs/enhanced.py --workdir runs/enhanced`.

Kept short on purpose (as flax's examples): the work is in `train.train_and_evaluate`, which tests
and studies call directly. Override any field with `--config.<field>=<value>`.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the model summary go.')
config_flags.DEFINE_config_file('config', None, 'A config file, e.g. configs/enhanced.py.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # The CPU backend reads XLA_FLAGS when it starts, so configure before any jax computation.
  from fer_jax import parallel
  parallel.configure_cpu_backend(FLAGS.config.get('fast_cpu', True))
  import jax
  from fer_jax import FerJaxError, metrics, train
  logging.get_absl_handler().addFilter(metrics.quiet_orbax)
  logging.info('JAX %s, devices: %s', jax.__version__, jax.local_devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except FerJaxError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
