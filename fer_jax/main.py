"""Trains a model: `python -m fer_jax.main --config configs/enhanced.py --workdir runs/enhanced`.

Override any config field with `--config.<field>=<value>`. Running again with the same workdir
resumes from its latest checkpoint. The work is in `train.train_and_evaluate`, which tests and
studies call directly.
"""
from absl import app, flags
from ml_collections import config_flags

from fer_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics, curves and the model summary go; '
                    'an existing run there is resumed.')
config_flags.DEFINE_config_file('config', None, 'A config file, e.g. configs/enhanced.py.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from absl import logging
  import jax
  from fer_jax import train
  logging.info('JAX %s on %s', jax.__version__, ', '.join(str(d) for d in jax.devices()))
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main, fast_cpu=lambda: FLAGS.config.fast_cpu)
