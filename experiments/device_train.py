"""Trains recipes side by side on one accelerator inside a fixed time budget, then brings the
best checkpoint of each back as plain arrays, in one call.

    python experiments/device_train.py --arrays fer2013_arrays.npz.xz --out OUT --budget_s 500 \\
        --recipe "sgd configs/best.py" \\
        --recipe "adam configs/best.py --config.optimizer=adam --config.backbone_lr=1e-3 ..."

Each recipe is `name config [--config.field=value ...]` and runs as `python -m fer_jax.main` (the
one training loop) on the arrays file, so nothing here needs TFDS. A budget machine gives no second
try, so the schedule is sized to the budget from a measurement, not a guess: every recipe first
runs two epochs (compile included) side by side, and its real run gets the most epochs whose
measured cost ends before the deadline (a cosine schedule must know its length up front). A run
still going at the deadline is stopped; its best checkpoint stands. Written to --out: the log,
summary.json (versions, calibration, epochs, histories) and each run's best evaluated variables
(EMA params when the run kept them, BatchNorm statistics): float32 for the best run (in shards,
the device tool returns files of at most 16 MiB), float16 for the others. Back here,

    python experiments/device_train.py --import_run FILES_DIR sgd FILES_DIR/summary.json \
        FILES_DIR/sgd_metrics.jsonl runs/gpu_sgd

turns the float32 export into a workdir with a `best` checkpoint for evaluate / pretrained.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

START = time.time()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message: str) -> None:
  print(f'[{time.time() - START:6.1f}s] {message}', flush=True)


def launch(name: str, spec: list[str], workdir: str, num_epochs: int, args: argparse.Namespace,
           env: dict[str, str]) -> subprocess.Popen:
  config, overrides = spec[0], spec[1:]
  command = [sys.executable, '-m', 'fer_jax.main', f'--config={config}', f'--workdir={workdir}',
             '--config.data.source=arrays', f'--config.data.arrays_path={args.arrays}',
             '--config.progress_bar=False', *overrides, f'--config.num_epochs={num_epochs}']
  log(f'{name}: {shlex.join(command)}')
  output = open(log_path(workdir, args), 'w')
  return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def log_path(workdir: str, args: argparse.Namespace) -> str:
  """The real runs' logs come back (--out); the calibrations' stay (at most 8 files return)."""
  name = os.path.basename(workdir)
  return os.path.join(args.work if name.startswith('calibrate') else args.out, f'{name}.log')


def history(path: str) -> list[dict]:
  """A metrics.jsonl (a run's, or one brought back under another name); [] if there is none."""
  return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def run_all(recipes: dict[str, list[str]], epochs: dict[str, int], prefix: str,
            args: argparse.Namespace, env: dict[str, str], deadline: float) -> dict[str, dict]:
  """Runs the recipes at once; returns each one's return code and wall seconds."""
  started = time.time()
  processes = {name: launch(name, spec, os.path.join(args.work, f'{prefix}_{name}'), epochs[name],
                            args, env) for name, spec in recipes.items()}
  results = {}
  while len(results) < len(processes):
    time.sleep(1.0)
    for name, process in processes.items():
      if name in results:
        continue
      if process.poll() is not None:
        results[name] = {'returncode': process.returncode, 'seconds': time.time() - started}
        log(f'{prefix} {name}: exit {process.returncode} after {results[name]["seconds"]:.1f} s')
      elif time.time() > deadline:
        process.terminate()
        process.wait(30)
        results[name] = {'returncode': 'stopped at the deadline',
                         'seconds': time.time() - started}
        log(f'{prefix} {name}: stopped at the deadline')
  return results


def tail(path: str, lines: int = 25) -> str:
  return ''.join(open(path).readlines()[-lines:]) if os.path.exists(path) else ''


def calibrate(recipes, args, env, deadline) -> tuple[dict, list]:
  for name in recipes:  # a retry starts clean, not from the failed try's checkpoints
    shutil.rmtree(os.path.join(args.work, f'calibrate_{name}'), ignore_errors=True)
  results = run_all(recipes, {name: 2 for name in recipes}, 'calibrate', args, env, deadline)
  failed = [name for name, r in results.items() if r['returncode'] != 0]
  for name in failed:
    log(f'calibration {name} failed:\n' + tail(log_path(f'calibrate_{name}', args)))
  return results, failed


def pinned_env(env: dict[str, str], wheels: str) -> dict[str, str]:
  """The versions this project was tested with, ahead of the machine's own."""
  target = '/tmp/site_pinned'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps',
                  '--no-compile', '--target', target,
                  *[os.path.join(wheels, w) for w in sorted(os.listdir(wheels))]], check=True)
  return {**env, 'PYTHONPATH': f'{target}:{env.get("PYTHONPATH", "")}'}


def versions(env: dict[str, str]) -> str:
  code = ('import jax, flax, optax, orbax.checkpoint as o, dm_pix, ml_collections;'
          'print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, '
          '"orbax", o.__version__, jax.devices())')
  done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
  return (done.stdout + done.stderr).strip()[-2000:]


def export(workdir: str, name: str, full_precision: bool, out: str) -> tuple[list[str], dict]:
  sys.path.insert(0, ROOT)
  from fer_jax import checkpoint, pretrained
  variables, meta = checkpoint.load_for_inference(workdir, 'best')
  dtype = 'float32' if full_precision else 'float16'
  written = pretrained.save_flat(variables, out, f'{name}_best_{dtype}', dtype)
  # The history travels as metrics.jsonl; the import puts it back into the run state.
  return [os.path.basename(p) for p in written], {
      'run': {**meta['run'], 'history': []},
      **{k: meta[k] for k in ('model_config', 'train_config', 'label_map')}}


def import_run(files_dir: str, name: str, summary_path: str, history_path: str,
               workdir: str) -> None:
  """Back on the workstation: an exported run becomes a workdir whose `best` checkpoint the
  project's tools read (fer_jax.pretrained.import_workdir)."""
  sys.path.insert(0, ROOT)
  import glob
  from fer_jax import FerJaxError, pretrained
  paths = sorted(glob.glob(os.path.join(files_dir, f'{name}_best_float32_*.npz')))
  if not paths:
    sys.exit(f'{files_dir} has no {name}_best_float32_*.npz; import the run exported in float32.')
  exports = json.load(open(summary_path)).get('exports', {})
  if name not in exports:
    sys.exit(f'{summary_path} has no export of run {name!r} (it has {sorted(exports) or "none"}); '
             'pass the summary.json of the call that exported it.')
  meta, runs = exports[name]['meta'], history(history_path)
  try:
    pretrained.import_workdir(pretrained.load_flat(paths), meta, runs, workdir)
  except FerJaxError as e:
    sys.exit(f'error: {history_path}: {e}')
  print(f'{workdir}: best checkpoint of epoch {meta["run"]["epoch"]} ({len(paths)} shards), '
        f'{len(runs)} epochs of history')


def curves(path: str, *runs: str) -> None:
  """Validation accuracy per epoch of NAME=metrics.jsonl runs in one figure."""
  sys.path.insert(0, ROOT)
  from fer_jax import plots
  plots.study_curves({name: history(file_path)
                      for name, file_path in (run.split('=', 1) for run in runs)}, path)


def main() -> None:
  if sys.argv[1:2] == ['--curves']:  # --curves OUT.png NAME=metrics.jsonl ...
    curves(*sys.argv[2:])
    return
  if sys.argv[1:2] == ['--import_run']:  # on the workstation, after the call
    import_run(*sys.argv[2:7])
    return
  if sys.argv[1:2] == ['--export_run']:  # internal: one export, in a process with the runs' packages
    workdir, name, full_precision, out = sys.argv[2:6]
    print(json.dumps(export(workdir, name, full_precision == '1', out)))
    return
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--arrays', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--work', default='/tmp/fer_jax_runs')
  parser.add_argument('--budget_s', type=float, required=True, help='From this script\'s start.')
  parser.add_argument('--export_s', type=float, default=40.0, help='Kept back for the export.')
  parser.add_argument('--max_epochs', type=int, default=400)
  parser.add_argument('--pinned_wheels', default='', help='Wheels to fall back on if a run fails.')
  parser.add_argument('--recipe', action='append', required=True)
  args = parser.parse_args()
  os.makedirs(args.work, exist_ok=True)
  recipes = {}
  for text in args.recipe:
    name, *spec = shlex.split(text)
    recipes[name] = spec
  deadline = START + args.budget_s - args.export_s
  env = {**os.environ, 'FER_JAX_FAST_CPU': '0', 'XLA_PYTHON_CLIENT_PREALLOCATE': 'false',
         'PYTHONUNBUFFERED': '1'}
  summary = {'versions': versions(env), 'recipes': recipes}
  log(summary['versions'])

  calibration, failed = calibrate(recipes, args, env, deadline)
  if failed and args.pinned_wheels:
    env = pinned_env(env, args.pinned_wheels)
    summary['versions'] = 'pinned: ' + versions(env)
    log(f'retrying with {summary["versions"]}')
    calibration, failed = calibrate(recipes, args, env, deadline)
  summary['calibration'] = calibration
  if failed:
    log(f'calibration failed for {failed}; nothing trained')
    json.dump(summary, open(os.path.join(args.out, 'summary.json'), 'w'), indent=1)
    sys.exit(1)

  # The real runs repeat the calibration's start (compile, data, first epochs), then go on at
  # the second epoch's measured pace, times the number of runs, plus a margin for checkpoint
  # saves: the GPU time-slices between processes, and the two calibrations' second epochs barely
  # overlapped (measured 1.04 s per epoch; the real runs side by side went at ~2.1 s, so the first
  # call's 271-epoch cosines were stopped at epoch 186).
  remaining = deadline - time.time()
  epochs = {}
  for name in recipes:
    calibration_run = history(os.path.join(args.work, f'calibrate_{name}', 'metrics.jsonl'))
    second = calibration_run[1]['epoch_seconds']
    startup = calibration[name]['seconds'] - 2 * second
    per_epoch = second * len(recipes) * 1.08 + 0.3
    epochs[name] = int(min(args.max_epochs, max(2, (remaining - startup - 5) // per_epoch)))
    summary.setdefault('pace', {})[name] = {'epoch_seconds': second, 'startup_seconds': startup,
                                            'epochs': epochs[name]}
    log(f'{name}: {second:.2f} s per epoch measured, startup {startup:.1f} s -> '
        f'{epochs[name]} epochs')
  summary['runs'] = run_all(recipes, epochs, 'run', args, env, deadline)

  summary['histories'] = {name: history(os.path.join(args.work, f'run_{name}', 'metrics.jsonl'))
                          for name in recipes}
  best = {name: max((h['eval_accuracy'] for h in runs), default=0.0)
          for name, runs in summary['histories'].items()}
  winner = max(best, key=best.get)
  summary['best_eval_accuracy'], summary['winner'] = best, winner
  for name in recipes:
    done = subprocess.run(  # one run's failure must not lose the others' weights
        [sys.executable, os.path.abspath(__file__), '--export_run',
         os.path.join(args.work, f'run_{name}'), name, str(int(name == winner)), args.out],
        env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
      log(f'export {name} failed:\n{done.stderr[-3000:]}')
    else:
      files, meta = json.loads(done.stdout.strip().splitlines()[-1])
      summary.setdefault('exports', {})[name] = {'files': files, 'meta': meta}
      log(f'exported {name}: {files}')
  json.dump(summary, open(os.path.join(args.out, 'summary.json'), 'w'), indent=1)
  for name in recipes:
    runs = summary['histories'][name]
    log(f'{name}: {len(runs)} epochs, best PublicTest {best[name]:.4f}' + (
        f', last {runs[-1]["eval_accuracy"]:.4f}, {runs[-1]["epoch_seconds"]:.2f} s/epoch'
        if runs else ''))
  log(f'winner {winner}; done')


if __name__ == '__main__':
  main()
