"""ONNX export: the graph onnxruntime runs gives Predictor's probabilities, for any batch size."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest

from fer_jax import FerJaxError, export
from fer_jax.evaluation import load_eval_data
from fer_jax.predictor import Predictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_onnx_matches_the_predictor_on_512_real_faces(tmp_path, real_csv):
  faces, _ = load_eval_data(real_csv, 'validation')
  out = subprocess.run([sys.executable, '-m', 'fer_jax.export', '--pretrained', '--out',
                        str(tmp_path / 'fer.onnx'), '--check_data', real_csv],
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr[-2000:]
  difference = float(out.stdout.split('largest probability difference ')[1].split(';')[0])
  assert difference < 1e-4
  predictor = Predictor.pretrained()
  model = onnx.load(str(tmp_path / 'fer.onnx'))
  props = {p.key: p.value for p in model.metadata_props}
  assert json.loads(props['labels']) == predictor.labels
  assert float(props['temperature']) == predictor.temperature_for('none') != 1.0  # one view
  assert sum(node.op_type == 'Conv' for node in model.graph.node) == 12
  session = onnxruntime.InferenceSession(str(tmp_path / 'fer.onnx'), providers=['CPUExecutionProvider'])
  for batch in (1, 3):  # the batch dimension is dynamic
    logits, probabilities = session.run(None, {'faces': faces[:batch]})
    assert probabilities.shape == (batch, 7)
    np.testing.assert_allclose(probabilities, predictor.probabilities(faces[:batch], 'none'),
                               atol=1e-4)
    np.testing.assert_allclose(logits, predictor.logits(faces[:batch]), rtol=1e-4, atol=1e-4)


def test_only_the_cnn48_model_exports():
  predictor = Predictor.pretrained()
  predictor.model_config.name = 'vgg16'
  with pytest.raises(FerJaxError, match="ONNX export serves model.name=cnn48, not 'vgg16'"):
    export.to_onnx(predictor)


def test_the_onnxruntime_runtime_gives_the_jax_logits_on_real_faces(real_csv):
  """Predictor(runtime='onnxruntime'), what videos classify with: JAX's logits and calibrated
  probabilities under every TTA, at any batch size (no padding), on 200 PublicTest faces."""
  faces, _ = load_eval_data(real_csv, 'validation')
  predictor = Predictor.pretrained()
  assert predictor.runtimes == ('jax', 'onnxruntime')
  for batch in (1, 3, 200):
    np.testing.assert_allclose(predictor.logits(faces[:batch], 'onnxruntime'),
                               predictor.logits(faces[:batch]), rtol=1e-4, atol=1e-4)
  for tta in ('none', 'flip', 'ten_crop'):
    fast = predictor.probabilities(faces[:200], tta, runtime='onnxruntime')
    np.testing.assert_allclose(fast, predictor.probabilities(faces[:200], tta), atol=1e-5)
  predictor.model_config.name = 'vgg16'
  assert predictor.runtimes == ('jax',)
  with pytest.raises(FerJaxError, match="runtime='onnxruntime' does not run model.name='vgg16'"):
    predictor.logits(faces[:1], 'onnxruntime')
