"""Trains a model: `python -m fer_jax.main --config configs/enhanced.py --workdir runs/enhanced`.

Override any config field with `--config.<field>=<value>`. Running again with the same workdir
resumes from its latest checkpoint. The work is in `train.train_and_evaluate`, which tests and
studies call directly.

Several processes (hosts) train one model together when each is started with the same command plus
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or `--distributed` alone where
JAX finds the cluster itself: Cloud TPU pod slices, SLURM, Open MPI); see fer_jax.distributed.
"""
import contextlib
import os

from absl import app, flags
from ml_collections import config_flags

from fer_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics, curves and the model summary go; '
                    'an existing run there is resumed.')
config_flags.DEFINE_config_file('config', None, 'A config file, e.g. configs/enhanced.py.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 in a multi-process run; '
                    'the same for every process.')
flags.DEFINE_integer('num_processes', None, 'How many processes train together.')
flags.DEFINE_integer('process_id', None, 'This process\'s number, 0 to num_processes - 1.')
flags.DEFINE_bool('distributed', False, 'Join a multi-process run described by the cluster '
                  '(Cloud TPU pod slice, SLURM, Open MPI) instead of the three flags above.')
flags.DEFINE_integer('initialization_timeout', 300, 'Seconds a process waits for the others to '
                     'join before it gives up.')
flags.DEFINE_integer('heartbeat_timeout', 30, 'Seconds without a sign of life after which a '
                     'process counts as dead and the others stop.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.workdir.strip():
    raise app.UsageError('--workdir is empty; pass the folder of the run, e.g. '
                         '--workdir runs/smoke')
  from absl import logging
  from fer_jax import distributed
  is_new = not os.path.exists(FLAGS.workdir)

  def resume_hint() -> str:
    from fer_jax import checkpoint
    return checkpoint.settle_stopped_run(FLAGS.workdir, is_new, distributed.is_primary())

  watch = distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                  FLAGS.distributed, FLAGS.initialization_timeout,
                                  FLAGS.heartbeat_timeout, resume_hint)
  import jax
  from fer_jax import train
  distributed.announce()
  logging.info('JAX %s on %s', jax.__version__, ', '.join(str(d) for d in jax.devices()))
  with distributed.stop_together(watch) if watch else contextlib.nullcontext():
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main, fast_cpu=lambda: FLAGS.config.fast_cpu)
