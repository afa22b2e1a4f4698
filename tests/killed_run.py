"""python tests/killed_run.py WORKDIR [N:WHEN] [FIELD=VALUE ...]: 3 epochs of configs/smoke.py on generated faces in
WORKDIR. With N:WHEN the process sends itself SIGKILL at the N-th Orbax save of the run: 'during'
(the save started, not yet committed) or 'after' (committed, before anything else happens). Each
save prints 'save N KIND STEP' first, so a test knows where the kill fell.

The selection scores are staged (epochs 1 and 2 improve, epoch 3 does not) so that the saves are
the same on every machine: 12 steps of real training move a 32-face accuracy by float noise, up or
down, and which epochs were a best differed between CPUs."""
import os
import signal
import sys

import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import generated_smoke_config  # noqa: E402
from fer_jax import FerJaxError, run_state, train  # noqa: E402


def kill_at(number: int, when: str) -> None:
  original, calls = ocp.CheckpointManager.save, [0]

  def save(self, step, *args, **kwargs):
    calls[0] += 1
    print(f'save {calls[0]} {os.path.basename(str(self.directory))} {step}', flush=True)
    result = original(self, step, *args, **kwargs)
    if calls[0] == number:
      if when == 'after':
        self.wait_until_finished()
      os.kill(os.getpid(), signal.SIGKILL)
    return result
  ocp.CheckpointManager.save = save


STAGED_SCORES = {1: 0.5, 2: 0.7, 3: 0.6}


def stage_scores() -> None:
  original = run_state.Tracker.update
  run_state.Tracker.update = lambda self, epoch, score: original(self, epoch, STAGED_SCORES[epoch])


def main() -> None:
  config = generated_smoke_config(128, 32)
  config.num_epochs, config.eval_batch_size, config.bn_recalibration_faces = 3, 32, 64
  config.model.dropout_rate, config.data.eval_split, config.data.max_eval_examples = 0.0, 'train', 32
  number, when = sys.argv[2].split(':') if len(sys.argv) > 2 and ':' in sys.argv[2] else ('0', 'never')
  for override in (arg for arg in sys.argv[2:] if '=' in arg):  # a rerun with a changed field
    field, value = override.split('=')
    group, _, name = field.rpartition('.')
    owner = config[group] if group else config
    owner[name] = type(owner[name])(value)
  kill_at(int(number), when)
  stage_scores()
  try:
    train.train_and_evaluate(config, sys.argv[1])
  except FerJaxError as e:  # as the command line says it (fer_jax.cli)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  main()
