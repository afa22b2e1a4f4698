"""What the persistent compilation cache saves: `predict` on one photo and a smoke run's wait for
its first progress line, cold (empty cache) and warm (filled by an earlier run), beside the same
commands on a checkout without the cache (`--base`), all interleaved in one run.

    git archive main | tar -x -C /tmp/fer_jax_base      # the code before, for the baseline
    python experiments/compile_cache_timing.py --base /tmp/fer_jax_base --runs 5 --smoke_runs 5

Each figure is the median wall-clock time of fresh processes. predict: the whole command,
`python -m fer_jax.predict --pretrained <the sample photo>`. smoke: from the start of
`python -m fer_jax.main --config configs/smoke.py --config.data.source=generated` in a new workdir
to its first `epoch 1 k/16` line (the process is then stopped); `resumed`: the same command
started again on a workdir stopped after epoch 1, to its first `epoch 2 k/16` line, warm.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO = os.path.join(REPO, 'fer_jax', 'samples', 'astronaut.jpg')
SMOKE = ['-m', 'fer_jax.main', '--config', 'configs/smoke.py', '--config.data.source=generated']


def environment(code: str, cache: str | None) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'FER_JAX_'))}
  env['PYTHONPATH'] = code
  if cache:
    env['JAX_COMPILATION_CACHE_DIR'] = cache
  else:
    env['FER_JAX_COMPILATION_CACHE'] = '0'
  return env


def predict_seconds(code: str, cache: str | None) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained', PHOTO], cwd=code,
                 env=environment(code, cache), check=True, capture_output=True)
  return time.perf_counter() - start


def seconds_to_line(code: str, cache: str | None, workdir: str, pattern: str,
                    stop: int = signal.SIGKILL) -> float:
  """Starts a smoke run, returns the seconds until a log line matches `pattern`, then stops it
  (SIGKILL by default: a timed run needs no clean stop)."""
  start = time.perf_counter()
  process = subprocess.Popen([sys.executable, *SMOKE, '--workdir', workdir], cwd=code,
                             env=environment(code, cache), stderr=subprocess.PIPE, text=True)
  try:
    for line in process.stderr:
      if re.search(pattern, line):
        return time.perf_counter() - start
    raise SystemExit(f'the smoke run ended without a line matching {pattern!r}')
  finally:
    process.send_signal(stop)
    try:
      process.wait(timeout=120)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--base', required=True, help='a checkout of the code before, for the baseline')
  parser.add_argument('--runs', type=int, default=5, help='predict runs per setting')
  parser.add_argument('--smoke_runs', type=int, default=5, help='smoke runs per setting')
  args = parser.parse_args()
  scratch = tempfile.mkdtemp(prefix='compile_cache_timing_')
  warm = os.path.join(scratch, 'warm')
  figures: dict[str, list[float]] = {}

  def add(name: str, seconds: float) -> None:
    figures.setdefault(name, []).append(round(seconds, 2))
    print(f'{name}: {seconds:.1f} s', flush=True)

  predict_seconds(REPO, warm)  # fills the warm cache
  for run in range(args.runs):
    add('predict, before (no cache)', predict_seconds(args.base, None))
    add('predict, cold cache', predict_seconds(REPO, os.path.join(scratch, f'cold_predict_{run}')))
    add('predict, warm cache', predict_seconds(REPO, warm))
  if not args.smoke_runs:
    print(json.dumps({name: {'median_s': statistics.median(values), 'runs_s': values}
                      for name, values in figures.items()}, indent=2))
    return
  progress = r'\] epoch 1 \d+/\d+'
  seconds_to_line(REPO, warm, os.path.join(scratch, 'fill'), progress)  # fills the warm cache
  for run in range(args.smoke_runs):
    add('smoke to first progress line, before (no cache)',
        seconds_to_line(args.base, None, os.path.join(scratch, f'base_{run}'), progress))
    add('smoke to first progress line, cold cache',
        seconds_to_line(REPO, os.path.join(scratch, f'cold_smoke_{run}'),
                        os.path.join(scratch, f'cold_{run}'), progress))
    add('smoke to first progress line, warm cache',
        seconds_to_line(REPO, warm, os.path.join(scratch, f'warm_{run}'), progress))
  stopped = os.path.join(scratch, 'stopped')  # a run stopped after its first epoch's checkpoint
  seconds_to_line(REPO, warm, stopped, r'\] epoch +1 +train loss', stop=signal.SIGTERM)
  if not os.listdir(os.path.join(stopped, 'checkpoints', 'latest')):
    raise SystemExit(f'{stopped} holds no checkpoint to resume from')
  for run in range(args.smoke_runs):
    workdir = os.path.join(scratch, f'resumed_{run}')
    shutil.copytree(stopped, workdir)
    add('resumed smoke to first progress line, warm cache',
        seconds_to_line(REPO, warm, workdir, r'\] epoch 2 \d+/\d+'))
  print(json.dumps({name: {'median_s': statistics.median(values), 'runs_s': values}
                    for name, values in figures.items()}, indent=2))
  shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
  main()
