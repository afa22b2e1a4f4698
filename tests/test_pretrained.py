"""The weights that ship in the package: they load, their half-precision values round-trip, they
score what their card says on a fixed slice of PublicTest, and the CLIs use them."""
import json
import os
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


def test_the_flat_weight_format_exports_imports_and_serves(tmp_path):
  """What experiments/device_train.py brings back from an accelerator: shards of '/'-named arrays,
  turned into a workdir that Predictor serves exactly as the run it came from."""
  from conftest import generated_smoke_config
  from fer_jax import checkpoint, train
  config = generated_smoke_config(64, 32)
  config.num_epochs, config.eval_batch_size = 1, 32
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  variables, meta = checkpoint.load_for_inference(str(tmp_path / 'run'), 'best')
  paths = pretrained.save_flat(variables, str(tmp_path / 'flat'), 'run_best_float32',
                               shard_bytes=2 ** 20)
  for path in paths:  # under the cap, unless one array alone is larger
    with np.load(path) as shard:
      assert os.path.getsize(path) <= 2 ** 20 + 2 ** 16 or len(shard.files) == 1
  assert len(paths) > 5
  history = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  pretrained.import_workdir(pretrained.load_flat(paths), meta, history, str(tmp_path / 'imported'))
  faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)
  np.testing.assert_array_equal(
      Predictor.from_workdir(str(tmp_path / 'imported')).probabilities(faces),
      Predictor.from_workdir(str(tmp_path / 'run')).probabilities(faces))
