"""Exports a model to ONNX, for onnxruntime, OpenCV DNN, TensorRT and the like.

    python -m fer_jax.export --pretrained --out fer.onnx
    python -m fer_jax.export --workdir runs/quick --out fer.onnx --check_data $FER2013_PATH

The graph takes what Predictor takes and gives what it gives for one view (TTA none):
  input  `faces`          uint8 [batch, 48, 48, 1], grey, pixels 0-255 (batch is dynamic)
  output `logits`         float32 [batch, 7]
  output `probabilities`  float32 [batch, 7], softmax(logits / temperature) (the temperature of
                          TTA none where the weights have one per TTA), classes in the
                          label map's order (stored as the model's metadata `labels`)
It is written from the model's own variables with every BatchNorm folded into the conv or dense
layer before it (fer_jax.batchnorm.fold), so it holds 12 convs, 4 max pools, a global average
pool and 5 dense layers. EnhancedCNN48 (model.name=cnn48) only. With --check_data, the first 512
PublicTest faces go through onnxruntime and Predictor, and the largest difference is printed.
"""
import json
import os
import sys
from typing import Any

from absl import app, flags

from fer_jax import FerJaxError, cli

OPSET = 17


def to_onnx(predictor: Any) -> bytes:
  """The serialised ONNX model of a Predictor's model, variables and temperature."""
  import numpy as np
  import onnx
  from onnx import TensorProto, helper, numpy_helper
  from fer_jax import batchnorm
  from fer_jax.models.cnn48 import CONV_BLOCKS
  if predictor.model_config.name != 'cnn48':
    raise FerJaxError(f'ONNX export serves model.name=cnn48, not {predictor.model_config.name!r}.')
  folded = batchnorm.fold(predictor.variables)['params']
  nodes, weights = [], []

  def constant(name: str, value) -> str:
    weights.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name

  nodes += [helper.make_node('Cast', ['faces'], ['as_float'], to=TensorProto.FLOAT),
            helper.make_node('Mul', ['as_float', constant('scale', 1 / 127.5)], ['scaled']),
            helper.make_node('Sub', ['scaled', constant('one', 1.0)], ['normalised']),
            helper.make_node('Transpose', ['normalised'], ['x0'], perm=[0, 3, 1, 2])]
  x, conv = 'x0', 0
  for block, (_, num_convs, pool) in enumerate(CONV_BLOCKS):
    for _ in range(num_convs):
      layer = folded['backbone'][f'Conv_{conv}']
      kernel = np.transpose(np.asarray(layer['kernel']), (3, 2, 0, 1))  # HWIO -> OIHW
      nodes.append(helper.make_node('Conv', [x, constant(f'conv{conv}_w', kernel),
                                             constant(f'conv{conv}_b', layer['bias'])],
                                    [f'conv{conv}'], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
      nodes.append(helper.make_node('Relu', [f'conv{conv}'], [f'relu{conv}']))
      x, conv = f'relu{conv}', conv + 1
    if pool:
      nodes.append(helper.make_node('MaxPool', [x], [f'pool{block}'], kernel_shape=[2, 2],
                                    strides=[2, 2]))
      x = f'pool{block}'
  nodes += [helper.make_node('GlobalAveragePool', [x], ['gap']),
            helper.make_node('Flatten', ['gap'], ['features'], axis=1)]
  x, dense = 'features', 0
  while f'Dense_{dense}' in folded['head']:
    layer = folded['head'][f'Dense_{dense}']
    last = f'Dense_{dense + 1}' not in folded['head']
    out = 'logits' if last else f'dense{dense}'
    nodes.append(helper.make_node('Gemm', [x, constant(f'dense{dense}_w', layer['kernel']),
                                           constant(f'dense{dense}_b', layer['bias'])], [out]))
    if not last:
      nodes.append(helper.make_node('Relu', [out], [f'dense_relu{dense}']))
      x = f'dense_relu{dense}'
    dense += 1
  temperature = predictor.temperature_for('none')  # the graph is one view
  nodes += [helper.make_node('Div', ['logits', constant('temperature', temperature)],
                             ['scaled_logits']),
            helper.make_node('Softmax', ['scaled_logits'], ['probabilities'], axis=1)]
  classes = len(predictor.labels)
  graph = helper.make_graph(
      nodes, 'fer_jax_cnn48',
      [helper.make_tensor_value_info('faces', TensorProto.UINT8, ['batch', 48, 48, 1])],
      [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', classes]),
       helper.make_tensor_value_info('probabilities', TensorProto.FLOAT, ['batch', classes])],
      initializer=weights)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                            producer_name='fer_jax')
  helper.set_model_props(model, {'labels': json.dumps(predictor.labels),
                                 'temperature': str(temperature)})
  onnx.checker.check_model(model)
  return model.SerializeToString()


def check(path: str, predictor: Any, faces: Any, repeats: int = 5) -> dict[str, float]:
  """Largest |probability difference| between onnxruntime on the file and Predictor (TTA none),
  and each one's faces per second on the batch (best of `repeats`, after a warm-up call)."""
  import time
  import numpy as np
  import onnxruntime
  faces = np.asarray(faces, np.uint8)
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  run_onnx = lambda: session.run(['probabilities'], {'faces': faces})[0]
  run_jax = lambda: predictor.probabilities(faces, 'none')
  figures = {'max_difference': float(np.abs(run_onnx() - run_jax()).max())}
  for name, run in (('onnxruntime', run_onnx), ('predictor', run_jax)):
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    figures[f'{name}_faces_per_second'] = len(faces) / min(times)
  return figures


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_bool('pretrained', False, 'Export the weights that ship with fer_jax.')
  flags.DEFINE_string('workdir', None, 'Or a training workdir holding checkpoints/.')
  flags.DEFINE_string('checkpoint', 'best', '"best", "latest" or a step number (with --workdir).')
  flags.DEFINE_string('out', 'fer_jax.onnx', 'Where to write the ONNX file.')
  flags.DEFINE_string('check_data', None, 'A FER2013 CSV: compare onnxruntime with Predictor on '
                      'its first 512 PublicTest faces.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if bool(FLAGS.workdir) == FLAGS.pretrained:
    raise app.UsageError('give either --workdir (a training workdir) or --pretrained.')
  try:
    import onnx  # noqa: F401
  except ImportError:
    raise FerJaxError('ONNX export needs the onnx package: pip install "fer_jax[export]".') from None
  cli.prepare_output(FLAGS.out, '--out')
  from fer_jax.predictor import Predictor
  predictor = (Predictor.pretrained() if FLAGS.pretrained else
               Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint))
  serialised = to_onnx(predictor)
  with open(FLAGS.out + '.tmp', 'wb') as f:
    f.write(serialised)
  os.replace(FLAGS.out + '.tmp', FLAGS.out)
  print(f'wrote {FLAGS.out} ({len(serialised) / 2**20:.1f} MiB): input faces uint8 '
        f'[batch, 48, 48, 1]; outputs logits and probabilities [batch, {len(predictor.labels)}]')
  if FLAGS.check_data:
    from fer_jax import evaluation
    faces, _ = evaluation.load_eval_data(FLAGS.check_data, 'validation')
    figures = check(FLAGS.out, predictor, faces[:512])
    print(f'onnxruntime vs Predictor on {len(faces[:512])} PublicTest faces: largest probability '
          f'difference {figures["max_difference"]:.2e}; faces/s (batch of 512): onnxruntime '
          f'{figures["onnxruntime_faces_per_second"]:.0f}, Predictor '
          f'{figures["predictor_faces_per_second"]:.0f}')
  sys.stdout.flush()


if __name__ == '__main__':
  define_flags()
  cli.run(main)
