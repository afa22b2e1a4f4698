"""Per-epoch metrics: a JSON-lines file in the workdir, TensorBoard event files beside it (written
with tensorboardX, no TensorFlow), a log line, and a progress bar."""
import json
import os
import shlex
import sys
import time
from typing import Any, TextIO

from absl import logging

from fer_jax import plural

METRICS_FILE = 'metrics.jsonl'


def write_history(workdir: str, history: list[dict[str, Any]]) -> None:
  """Rewrites metrics.jsonl from the checkpointed history, so it matches a resumed run exactly."""
  path = os.path.join(workdir, METRICS_FILE)
  with open(path + '.tmp', 'w') as f:
    for record in history:
      f.write(json.dumps(record) + '\n')
  os.replace(path + '.tmp', path)


def read_history(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


def format_epoch(record: dict[str, Any]) -> str:
  return (f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} "
          f"acc {record['train_accuracy']:.4f}  val loss {record['eval_loss']:.4f} "
          f"acc {record['eval_accuracy']:.4f}  lr {record['backbone_lr']:.2e}/"
          f"{record['head_lr']:.2e}  {record['epoch_seconds']:.1f}s "
          f"({record['train_images_per_second']:.0f} img/s)")


def log_outputs(workdir: str, epochs: int, best_score: float, best_epoch: int) -> None:
  """The run's result and every file it left in the workdir, so nobody has to go looking."""
  lines = []
  for folder, subfolders, names in os.walk(workdir):
    subfolders[:] = [] if os.path.basename(folder).isdigit() else sorted(subfolders)
    relative = os.path.relpath(folder, workdir)
    if os.path.basename(folder).isdigit():  # an Orbax step: one line, not its internals
      lines.append(f'  {relative}/')
    else:
      lines += [f'  {os.path.join(relative, n) if relative != "." else n}' for n in sorted(names)
                if not n.startswith('.')]  # the lock file is the run's, not an output
  logging.info('%s: %s, best validation accuracy %.4f at epoch %d; wrote\n%s\n'
               'next: python -m fer_jax.evaluate --workdir %s --data <csv or folder>, '
               'python -m fer_jax.predict --workdir %s <images>',
               os.path.abspath(workdir), plural(epochs, 'epoch'), best_score, best_epoch,
               '\n'.join(lines), shlex.quote(workdir), shlex.quote(workdir))


class ProgressBar:
  """A one-line bar on a terminal; a log line every ~10 % elsewhere (CI logs, files)."""

  def __init__(self, total: int, description: str, enabled: bool = True, stream: TextIO = sys.stderr):
    self.total, self.description, self.stream = total, description, stream
    self.enabled = enabled
    self.interactive = enabled and stream.isatty()
    self.start = time.perf_counter()
    self.next_log = max(1, total // 10)
    self.done = 0

  def update(self, done: int, extra: str = '') -> None:
    self.done = done
    if not self.enabled:
      return
    elapsed = time.perf_counter() - self.start
    rate = done / elapsed if elapsed > 0 else 0.0
    if self.interactive:
      filled = int(30 * done / self.total)
      self.stream.write(f'\r{self.description} [{"#" * filled}{"." * (30 - filled)}] '
                        f'{done}/{self.total} {rate:.1f} it/s {extra}')
      self.stream.flush()
    elif done >= self.next_log or done == self.total:
      logging.info('%s %d/%d (%.1f it/s) %s', self.description, done, self.total, rate, extra)
      self.next_log = done + max(1, self.total // 10)

  def close(self) -> None:
    if self.interactive:
      self.stream.write('\n')
      self.stream.flush()


class TensorBoard:
  """Event files in <workdir>/tensorboard: `tensorboard --logdir <workdir>` shows them. Disabled,
  it writes nothing (the processes of a multi-process run other than process 0)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.writer = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(logdir=os.path.join(workdir, 'tensorboard'), flush_secs=30)

  def epoch(self, record: dict[str, Any]) -> None:
    """Every number of an epoch's metrics.jsonl record, at the record's train step."""
    if self.writer is None:
      return
    for name, value in record.items():
      if name not in ('epoch', 'step') and isinstance(value, (int, float)):
        group = ('train' if name.startswith('train_') else
                 'eval' if name.startswith('eval_') or name == 'selection_score' else
                 'learning_rate' if name.endswith('_lr') or name == 'lr_scale' else
                 'time' if name.endswith(('_seconds', '_per_second')) else 'evals')
        self.writer.add_scalar(f'{group}/{name}', value, record['step'])
    self.writer.flush()

  def train_loss(self, step: int, loss: float) -> None:
    if self.writer is None:
      return
    self.writer.add_scalar('train/loss_running', loss, step)

  def faces(self, tag: str, faces: Any, step: int) -> None:
    """A grid of faces in [-1, 1] (N, 48, 48, 1), as one image."""
    if self.writer is None:
      return
    import numpy as np
    faces = np.clip((np.asarray(faces, np.float32)[..., 0] + 1) / 2, 0, 1)
    rows = int(np.ceil(len(faces) / 8))
    grid = np.ones((rows * 50, 8 * 50), np.float32)
    for i, face in enumerate(faces):
      grid[(i // 8) * 50:(i // 8) * 50 + 48, (i % 8) * 50:(i % 8) * 50 + 48] = face
    self.writer.add_image(tag, grid[None], step)

  def confusion(self, matrix: Any, class_names: list[str], step: int) -> None:
    """The confusion matrix of a new best epoch, as a picture."""
    if self.writer is None:
      return
    import matplotlib.pyplot as plt
    from fer_jax import plots
    figure = plots.confusion_matrix_figure(matrix, class_names, f'best at step {step}')
    self.writer.add_figure('eval/confusion_matrix', figure, step)
    plt.close(figure)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
