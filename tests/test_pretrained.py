"""The weights that ship in the package: they load, their half-precision values round-trip, they
score what their card says on a fixed slice of PublicTest, and the CLIs use them."""
import json
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from fer_jax import EMOTIONS, models, pretrained
from fer_jax.evaluation import evaluate, load_eval_data
from fer_jax.predict import Predictor
from tests.conftest import REPO


@pytest.fixture(scope='module')
def shipped():
  assert (REPO / 'fer_jax' / 'weights').is_dir(), 'fer_jax/weights/ is missing from the checkout'
  return pretrained.load()


def test_shipped_weights_match_the_model_and_fit_the_budget(shipped):
  variables, card = shipped
  model = models.create_model(__import__('ml_collections').ConfigDict(card['model_config']))
  expected = models.init_variables(model, jax.random.PRNGKey(0))
  assert (jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(expected))
  for got, want in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(expected)):
    assert got.shape == want.shape and got.dtype == np.float32
  assert models.count_params(variables['params']) == 6_673_127
  weights_path, _ = pretrained.paths()
  assert __import__('os').path.getsize(weights_path) <= 15 * 2**20
  assert card['label_map'] == {str(i): name for i, name in enumerate(EMOTIONS)}


def test_half_precision_values_round_trip(shipped):
  variables, card = shipped
  weights_path, _ = pretrained.paths()
  with np.load(weights_path) as stored:
    stored = dict(stored)
  assert all(v.dtype == np.dtype(card['dtype']) for v in stored.values())
  again = pretrained.to_half(variables, card['dtype'])
  assert set(again) == set(stored)
  for name, value in stored.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)
  assert np.all(np.isfinite(np.concatenate([v.astype(np.float32).ravel() for v in stored.values()])))


def test_accuracy_on_the_check_slice_is_the_cards(shipped, real_csv):
  _, card = shipped
  faces, labels = load_eval_data(real_csv, 'validation')
  start, stop = card['check_slice']['rows']
  report = evaluate(Predictor.pretrained(), faces[start:stop], labels[start:stop], ['none'])['none']
  # One face of slack: a prediction on a tie can flip with another CPU's float rounding.
  assert abs(report['correct'] - card['check_slice']['correct']) <= 1
  assert report['accuracy'] > 0.5  # far above the majority class (~25 %)


def test_predict_cli_with_pretrained(tmp_path, real_csv):
  faces, labels = load_eval_data(real_csv, 'validation')
  path = tmp_path / 'face.png'
  Image.fromarray(faces[0, :, :, 0]).save(path)
  result = subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained', '--json',
                           str(path)], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  expected = Predictor.pretrained().predict([str(path)])[0]
  assert line['emotion'] == expected.emotion
  assert abs(sum(line['probabilities'].values()) - 1) < 1e-4
