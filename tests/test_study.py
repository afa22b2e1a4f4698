"""Studies: parsing and its errors, trials on a tiny generated dataset, skipping, resuming, results."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from fer_jax import FerJaxError, metrics, study, train
from tests.conftest import REPO

BASE = '''
from configs import smoke

def get_config():
  config = smoke.get_config()
  config.data.source = 'generated'
  config.data.generated_train_size = 64
  config.data.generated_eval_size = 32
  config.eval_batch_size = 32
  config.num_epochs = 2
  config.progress_bar = False
  return config
'''


def write_study(tmp_path, spec: str, name: str = 'study.py') -> str:
  path = tmp_path / name
  path.write_text(BASE + '\n\ndef get_study():\n  return ' + textwrap.dedent(spec).strip() + '\n')
  return str(path)


def test_grid_trials_are_the_product_times_seeds(tmp_path):
  path = write_study(tmp_path, "{'grid': {'model.dropout_rate': [0.3, 0.5], "
                               "'optimizer': ['adam', 'sgd']}, 'seeds': [0, 1]}")
  loaded = study.load_study(path)
  assert loaded.fields == ('model.dropout_rate', 'optimizer')
  assert len(loaded.trials) == 8
  assert len({t.name for t in loaded.trials}) == 8
  trial = next(t for t in loaded.trials if t.name == 'model.dropout_rate=0.5,optimizer=sgd,seed=1')
  assert (trial.config.model.dropout_rate, trial.config.optimizer, trial.config.seed) == (0.5, 'sgd', 1)
  assert trial.config.data.generated_train_size == 64   # the base config is kept


def test_random_search_is_reproducible_and_in_range(tmp_path):
  path = write_study(tmp_path, "{'random': {'head_lr': ('loguniform', 1e-4, 1e-2), "
                               "'label_smoothing': [0.0, 0.1]}, 'num_trials': 5, 'random_seed': 3}")
  first, second = study.load_study(path), study.load_study(path)
  rates = [t.config.head_lr for t in first.trials]
  assert rates == [t.config.head_lr for t in second.trials]
  assert all(1e-4 <= r <= 1e-2 for r in rates) and len(set(rates)) == 5
  assert {t.config.label_smoothing for t in first.trials} <= {0.0, 0.1}


def test_points_fill_the_fields_they_leave_out_from_the_base(tmp_path):
  path = write_study(tmp_path, "{'points': [{'augment.steps': ''}, "
                               "{'augment.steps': 'flip', 'augment.ramp_epochs': 3}]}")
  loaded = study.load_study(path)
  assert loaded.fields == ('augment.steps', 'augment.ramp_epochs')
  assert [t.point for t in loaded.trials] == [
      (('augment.steps', ''), ('augment.ramp_epochs', 0)),
      (('augment.steps', 'flip'), ('augment.ramp_epochs', 3))]
  assert loaded.trials[1].config.augment.ramp_epochs == 3


@pytest.mark.parametrize('spec, message', [
    ("{'grid': {'model.dropuot_rate': [0.3]}}", "'model.dropuot_rate' is not in the base config"),
    ("{'grid': {'modle.dropout_rate': [0.3]}}", "'modle.dropout_rate' is not in the base config"),
    ("{'grid': {'batch_size': [32.5]}}", "'batch_size' has type int"),
    ("{'grid': {'optimizer': [1]}}", "'optimizer' has type str"),
    ("{'grid': {'model.dropout_rate': []}}", "'model.dropout_rate' has no values"),
    ("{'grid': {}}", 'needs exactly one of a non-empty "grid", "random" or "points"'),
    ("{'points': [{'augment.stpes': ''}]}", "'augment.stpes' is not in the base config"),
    ("{'grid': {'lr_schedule': ['cosine', 'linear']}}", "config.lr_schedule='linear'"),
    ("{'grid': {'augment.rotate_degrees': [400.0]}}", 'config.augment.rotate_degrees=400.0'),
    ("{'grid': {'seed': [1]}, 'metric': 'accuracy'}", "metric 'accuracy' is unknown"),
    ("{'grid': {'seed': [1]}, 'seeds': []}", '"seeds" must be a non-empty list'),
    ("{'grid': {'seed': [1]}, 'sweep': 1}", 'unknown key(s) sweep'),
])
def test_a_bad_study_fails_naming_the_field(tmp_path, spec, message):
  path = write_study(tmp_path, spec)
  with pytest.raises(FerJaxError) as error:
    study.load_study(path)
  assert message in str(error.value) and path in str(error.value)


def test_a_bad_study_fails_before_any_trial_starts(tmp_path):
  """The CLI: one error line, exit status 1, nothing written in the workdir."""
  path = write_study(tmp_path, "{'grid': {'model.dropout_rate': [0.3, 1.5]}}")
  workdir = tmp_path / 'runs'
  result = subprocess.run([sys.executable, '-m', 'fer_jax.study', path, '--workdir', str(workdir)],
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 1
  assert 'config.model.dropout_rate=1.5' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


def test_run_skip_resume_and_results(tmp_path):
  path = write_study(tmp_path, "{'grid': {'label_smoothing': [0.0, 0.2]}, 'seeds': [0]}")
  loaded = study.load_study(path)
  workdir = str(tmp_path / 'runs')
  first, second = loaded.trials

  # An interrupted trial: one of its two epochs ran, and its checkpoint is there.
  interrupted = first.config.copy_and_resolve_references()
  interrupted.num_epochs = 1
  train.train_and_evaluate(interrupted, study.trial_dir(workdir, first))
  epoch_one = metrics.read_history(study.trial_dir(workdir, first))
  assert len(epoch_one) == 1

  assert study.run_trials(loaded, workdir) == [first.name, second.name]
  history = metrics.read_history(study.trial_dir(workdir, first))
  assert [r['epoch'] for r in history] == [1, 2]
  assert history[0] == epoch_one[0]   # resumed at epoch 2, epoch 1 not trained again

  # A rerun trains nothing.
  assert study.run_trials(loaded, workdir) == []

  rows = study.write_results(loaded, workdir)
  with open(os.path.join(workdir, 'results.csv')) as f:
    table = list(csv.DictReader(f))
  assert [r['trial'] for r in table] == [first.name, second.name]
  for row, trial in zip(table, (first, second)):
    history = metrics.read_history(study.trial_dir(workdir, trial))
    assert row['status'] == 'done' and row['epochs'] == '2'
    assert float(row['best_eval_accuracy']) == max(r['eval_accuracy'] for r in history)
    with open(os.path.join(study.trial_dir(workdir, trial), study.DONE_FILE)) as f:
      assert json.load(f)['value'] == float(row['best_eval_accuracy'])
  markdown = open(os.path.join(workdir, 'results.md')).read().splitlines()
  ranked = sorted(rows, key=lambda r: -r['best_eval_accuracy'])
  body = markdown[4:]   # title, blank line, header, separator
  assert [line.split(' | ')[0].strip('| ') for line in body] == [
      study._value_text(r['label_smoothing']) for r in ranked]
  assert f"{100 * ranked[0]['best_eval_accuracy']:.2f} ± 0.00 %" in body[0]
  for picture in ('curves.png', 'best_eval_accuracy_vs_label_smoothing.png'):
    assert os.path.getsize(os.path.join(workdir, picture)) > 1000


def test_summary_is_mean_and_std_over_seeds():
  loaded = study.Study('s.py', ('head_lr',), 'best_eval_accuracy', ())
  rows = [{'head_lr': 1e-3, 'epochs': 2, 'best_eval_accuracy': a} for a in (0.5, 0.6, 0.7)]
  rows += [{'head_lr': 1e-2, 'epochs': 2, 'best_eval_accuracy': 0.65},
           {'head_lr': 1e-4, 'epochs': 0}]
  lines = study.summary_table(loaded, rows).splitlines()
  assert lines[2] == '| 0.01 | 65.00 ± 0.00 % | 1/1 | 2 |'
  assert lines[3] == '| 0.001 | 60.00 ± 10.00 % | 3/3 | 2 |'
  assert lines[4] == '| 0.0001 | n/a | 0/1 | 0 |'
