"""Hyperparameter studies: `python -m fer_jax.study experiments/<name>.py --workdir runs/<name>`.

A study file is a config file with one more function (big_vision keeps a sweep beside its config):

    def get_config():            # the base config every trial starts from
      ...
    def get_study():             # what to vary
      return {'grid': {'model.dropout_rate': [0.3, 0.5, 0.7]},
              'seeds': [0, 1], 'metric': 'best_eval_accuracy'}

Instead of 'grid' (every combination): 'random' ({field: [choices] or ('loguniform' | 'uniform',
low, high)} with 'num_trials' and 'random_seed'), or 'points' (a list of {field: value} dicts, for
settings that go together, e.g. a step list with its strength schedule).

Every trial trains with `train.train_and_evaluate` in `<workdir>/trials/<name>/`, so it has its own
Orbax checkpoints and metrics. A finished trial leaves `done.json` and is skipped on a rerun; an
interrupted one resumes from its latest checkpoint. The whole study is checked (fields, types,
values) before the first trial starts. With several devices, run one process per device on a share
of the trials (`CUDA_VISIBLE_DEVICES=i ... --num_shards=N --shard_index=i`), then collect the table
with `--results_only`.
"""
import copy
import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
from typing import Any, Callable

from absl import app, flags, logging
import ml_collections
import numpy as np

from fer_jax import FerJaxError, cli, metrics

FLAGS = flags.FLAGS

# metric name -> (how to read it from a trial's history, True when larger is better)
METRICS: dict[str, tuple[Callable[[list[dict]], float], bool]] = {
    'best_eval_accuracy': (lambda h: max(r['eval_accuracy'] for r in h), True),
    'final_eval_accuracy': (lambda h: h[-1]['eval_accuracy'], True),
    'best_eval_loss': (lambda h: min(r['eval_loss'] for r in h), False),
}
DONE_FILE = 'done.json'


@dataclasses.dataclass(frozen=True)
class Trial:
  name: str
  point: tuple[tuple[str, Any], ...]   # (field, value) pairs that differ from the base config
  seed: int
  config: ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Study:
  path: str
  fields: tuple[str, ...]
  metric: str
  trials: tuple[Trial, ...]


def _load_module(path: str):
  if not os.path.isfile(path):
    raise FerJaxError(f'study file {path} does not exist; pass a file from experiments/.')
  spec = importlib.util.spec_from_file_location(f'fer_jax_study_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for function in ('get_config', 'get_study'):
    if not callable(getattr(module, function, None)):
      raise FerJaxError(f'study file {path} has no {function}(); define it (see fer_jax/study.py).')
  return module


def set_field(config: ml_collections.ConfigDict, field: str, value: Any, where: str) -> None:
  """config.<field> = value for a dotted field, with an error naming the field when it cannot be."""
  *parents, leaf = field.split('.')
  node = config
  for i, name in enumerate(parents):
    node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict):
      raise FerJaxError(f'{where}: field {field!r} is not in the base config '
                        f'({".".join(parents[:i + 1])} is not a group); check its spelling.')
  if leaf not in node:
    raise FerJaxError(f'{where}: field {field!r} is not in the base config; check its spelling '
                      f'(fields there: {", ".join(sorted(node.keys()))}).')
  old = node[leaf]
  if isinstance(old, bool) != isinstance(value, bool) or (
      isinstance(old, str) != isinstance(value, str)):
    raise FerJaxError(f'{where}: field {field!r} has type {type(old).__name__} in the base config but '
                      f'the study gives {value!r} ({type(value).__name__}); give a '
                      f'{type(old).__name__}.')
  try:
    node[leaf] = value
  except TypeError:
    raise FerJaxError(f'{where}: field {field!r} has type {type(old).__name__} in the base config but '
                      f'the study gives {value!r} ({type(value).__name__}); give a '
                      f'{type(old).__name__}.') from None


def _get_field(config: ml_collections.ConfigDict, field: str, where: str) -> Any:
  node = config
  for name in field.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise FerJaxError(f'{where}: field {field!r} is not in the base config; check its spelling.')
    node = node[name]
  return node


def _value_text(value: Any) -> str:
  return f'{value:.4g}' if isinstance(value, float) else str(value)


def trial_name(point: tuple[tuple[str, Any], ...], seed: int, index: int | None = None) -> str:
  parts = [f'{field}={_value_text(value)}' for field, value in point] + [f'seed={seed}']
  name = ','.join(parts) if index is None else f'{index:03d},' + ','.join(parts)
  return re.sub(r'[^A-Za-z0-9._=,+-]', '_', name)


def _random_points(where: str, space: dict[str, Any], num_trials: int,
                   rng: np.random.Generator) -> list[tuple[tuple[str, Any], ...]]:
  """A list of values is a uniform choice; ('loguniform' | 'uniform', low, high) a range."""
  def draw(field, values):
    if isinstance(values, tuple) and len(values) == 3 and values[0] in ('uniform', 'loguniform'):
      kind, low, high = values
      if not 0 < low < high if kind == 'loguniform' else not low < high:
        raise FerJaxError(f'{where}: random[{field!r}] = {values} is an empty range; use low < high '
                          '(and low > 0 for loguniform).')
      if kind == 'uniform':
        return float(rng.uniform(low, high))
      return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return values[int(rng.integers(len(values)))]
  return [tuple((field, draw(field, values)) for field, values in space.items())
          for _ in range(num_trials)]


def load_study(path: str, module: Any = None) -> Study:
  """Reads and checks a study file: every trial's config is built (and validated) here. `module`:
  the file already executed by the caller, so it runs once."""
  from fer_jax import config_checks
  module = module or _load_module(path)
  spec = dict(module.get_study())
  where = f'study file {path}'
  known = {'grid', 'random', 'points', 'num_trials', 'seeds', 'metric', 'random_seed'}
  unknown = sorted(set(spec) - known)
  if unknown:
    raise FerJaxError(f'{where}: get_study() has unknown key(s) {", ".join(unknown)}; use '
                      f'{", ".join(sorted(known))}.')
  grid, space = dict(spec.get('grid') or {}), dict(spec.get('random') or {})
  listed = [dict(p) for p in spec.get('points') or []]
  if sum(map(bool, (grid, space, listed))) != 1:
    raise FerJaxError(f'{where}: get_study() needs exactly one of a non-empty "grid", "random" or '
                      '"points".')
  if any(not p for p in listed):
    raise FerJaxError(f'{where}: "points" holds an empty point; give each at least one field.')
  for field, values in {**grid, **space}.items():
    if isinstance(values, (list, tuple)) and len(values) == 0:
      raise FerJaxError(f'{where}: field {field!r} has no values to try; give it at least one.')
    if not isinstance(values, (list, tuple)):
      raise FerJaxError(f'{where}: field {field!r} must map to a list of values, not {values!r}.')
  metric = spec.get('metric', 'best_eval_accuracy')
  if metric not in METRICS:
    raise FerJaxError(f'{where}: metric {metric!r} is unknown; use one of {", ".join(METRICS)}.')
  seeds = list(spec.get('seeds', [0]))
  if not seeds or not all(isinstance(s, int) for s in seeds):
    raise FerJaxError(f'{where}: "seeds" must be a non-empty list of integers, not {seeds!r}.')

  base = module.get_config()
  if grid:
    fields = tuple(grid)
    points = [tuple(zip(grid, values)) for values in itertools.product(*grid.values())]
  elif listed:
    fields = tuple(dict.fromkeys(f for p in listed for f in p))
    # A field a point leaves out keeps the base config's value.
    points = [tuple((f, p[f] if f in p else _get_field(base, f, where)) for f in fields)
              for p in listed]
  else:
    fields = tuple(space)
    num_trials = int(spec.get('num_trials', 0))
    if num_trials < 1:
      raise FerJaxError(f'{where}: a random search needs "num_trials" >= 1.')
    rng = np.random.default_rng(int(spec.get('random_seed', 0)))
    points = _random_points(where, space, num_trials, rng)

  trials = []
  for index, (point, seed) in enumerate(itertools.product(points, seeds)):
    config = copy.deepcopy(base)
    for field, value in point:
      set_field(config, field, value, where)
    set_field(config, 'seed', seed, where)
    try:
      config_checks.validate(config)
    except FerJaxError as e:
      raise FerJaxError(f'{where}, trial {trial_name(point, seed)}: {e}') from None
    trials.append(Trial(trial_name(point, seed, None if grid else index), point, seed, config))
  return Study(path, fields, metric, tuple(trials))


def trial_dir(workdir: str, trial: Trial) -> str:
  return os.path.join(workdir, 'trials', trial.name)


def run_trials(study: Study, workdir: str, shard_index: int = 0, num_shards: int = 1) -> list[str]:
  """Trains this shard's unfinished trials (resuming interrupted ones); returns the names run."""
  from fer_jax import train
  ran = []
  for trial in study.trials[shard_index::num_shards]:
    directory = trial_dir(workdir, trial)
    if os.path.exists(os.path.join(directory, DONE_FILE)):
      logging.info('study: %s is finished, skipping', trial.name)
      continue
    logging.info('study: training %s', trial.name)
    train.train_and_evaluate(trial.config, directory)
    history = metrics.read_history(directory)
    with open(os.path.join(directory, DONE_FILE), 'w') as f:
      json.dump({'metric': study.metric, 'value': METRICS[study.metric][0](history),
                 'epochs': len(history)}, f)
    ran.append(trial.name)
  return ran


def collect(study: Study, workdir: str) -> list[dict[str, Any]]:
  """One row per trial: its point, seed, status and metrics (empty metrics when not started)."""
  rows = []
  for trial in study.trials:
    directory = trial_dir(workdir, trial)
    row = {'trial': trial.name, **dict(trial.point), 'seed': trial.seed}
    history = (metrics.read_history(directory)
               if os.path.exists(os.path.join(directory, metrics.METRICS_FILE)) else [])
    row['status'] = ('done' if os.path.exists(os.path.join(directory, DONE_FILE)) else
                     'partial' if history else 'pending')
    row['epochs'] = len(history)
    if history:
      best = max(history, key=lambda r: r['eval_accuracy'])
      row.update({study.metric: METRICS[study.metric][0](history),
                  'best_eval_accuracy': best['eval_accuracy'], 'best_epoch': best['epoch'],
                  'final_eval_accuracy': history[-1]['eval_accuracy'],
                  'train_seconds': sum(r['epoch_seconds'] for r in history)})
    row['history'] = history
    rows.append(row)
  return rows


def summary_table(study: Study, rows: list[dict[str, Any]]) -> str:
  """Markdown, one line per point: the metric's mean +- std over its seeds, best first."""
  larger_is_better = METRICS[study.metric][1]
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(row[f] for f in study.fields), []).append(row)
  lines = []
  for point, members in groups.items():
    values = [m[study.metric] for m in members if study.metric in m]
    mean = float(np.mean(values)) if values else float('nan')
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    epochs = sorted({m['epochs'] for m in members})
    lines.append((mean, point, std, len(values), len(members), epochs))
  lines.sort(key=lambda l: (math.isnan(l[0]), -l[0] if larger_is_better else l[0]))
  header = ' | '.join(study.fields)
  out = [f'| {header} | {study.metric} (mean ± std) | seeds done | epochs |',
         '|' + '---|' * len(study.fields) + '---:|---:|---:|']
  for mean, point, std, done, total, epochs in lines:
    shown = 'n/a' if math.isnan(mean) else (f'{100 * mean:.2f} ± {100 * std:.2f} %'
                                            if 'accuracy' in study.metric else f'{mean:.4f} ± {std:.4f}')
    out.append(f'| {" | ".join(_value_text(v) for v in point)} | {shown} | {done}/{total} | '
               f'{",".join(map(str, epochs))} |')
  return '\n'.join(out) + '\n'


def write_results(study: Study, workdir: str) -> list[dict[str, Any]]:
  """results.csv, results.md and the PNGs; returns the rows."""
  from fer_jax import plots
  rows = collect(study, workdir)
  columns = (['trial', *study.fields, 'seed', 'status', 'epochs', study.metric, 'best_eval_accuracy',
              'best_epoch', 'final_eval_accuracy', 'train_seconds'])
  columns = list(dict.fromkeys(columns))
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, columns, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  table = summary_table(study, rows)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'Study {study.path}, ranked by {study.metric}.\n\n{table}')
  plots.study_curves({r['trial']: r['history'] for r in rows if r['history']},
                     os.path.join(workdir, 'curves.png'))
  for field in study.fields:
    done = [r for r in rows if study.metric in r]
    plots.metric_against(field, [r[field] for r in done], [r[study.metric] for r in done],
                         study.metric, os.path.join(workdir, f'{study.metric}_vs_{field}.png'))
  return rows


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Where the trials, results.csv, results.md and PNGs go.')
  flags.DEFINE_integer('num_shards', 1, 'Split the trials over this many processes (one per device).')
  flags.DEFINE_integer('shard_index', 0, 'Which share of the trials this process trains.')
  flags.DEFINE_bool('results_only', False, 'Only collect the results of what has run.')
  flags.DEFINE_bool('dry_run', False, 'Check the study and list its trials; train nothing.')
  flags.mark_flags_as_required(['workdir'])


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError('usage: python -m fer_jax.study experiments/<name>.py --workdir runs/<name>')
  # Before anything touches JAX: validating the study starts the CPU backend, after which the
  # fast-CPU XLA flag would be ignored.
  module = _load_module(argv[1])
  cli.configure_cpu_backend(module.get_config().fast_cpu)
  study = load_study(argv[1], module)
  if not 0 <= FLAGS.shard_index < FLAGS.num_shards:
    raise FerJaxError(f'--shard_index={FLAGS.shard_index} is not in [0, --num_shards='
                      f'{FLAGS.num_shards}); pick one of 0..{FLAGS.num_shards - 1}.')
  if FLAGS.dry_run:
    print('\n'.join(t.name for t in study.trials))
    return
  cli.prepare_folder(FLAGS.workdir, '--workdir')
  logging.info('study %s: %d trials in %s, each in its own sub-workdir', argv[1], len(study.trials),
               os.path.abspath(FLAGS.workdir))
  if not FLAGS.results_only:
    run_trials(study, FLAGS.workdir, FLAGS.shard_index, FLAGS.num_shards)
  write_results(study, FLAGS.workdir)
  with open(os.path.join(FLAGS.workdir, 'results.md')) as f:
    print(f.read())
  logging.info('wrote results.csv, results.md and plots to %s', os.path.abspath(FLAGS.workdir))


if __name__ == '__main__':
  define_flags()
  cli.run(main, fast_cpu=None)
