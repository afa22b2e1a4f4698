"""Per-epoch metrics: a JSON-lines file in the workdir, a log line, and a progress bar."""
import json
import os
import sys
import time
from typing import Any, TextIO

from absl import logging

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
