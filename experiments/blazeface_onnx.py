"""How fer_jax/weights/blazeface_short_range.onnx was made from the shipped .tflite (MediaPipe's
short-range BlazeFace, Apache-2.0): converted by tflite2onnx, then given a free batch dimension
(the input's first dimension named `batch`, and the four head reshapes told to keep it), so a
frame's squares run in one onnxruntime call. Checked here against OpenCV DNN on the .tflite, and
both runtimes timed (ms per 128x128 pass, batches of 1 and 8, one thread each).

    pip install --target /tmp/t2o --no-deps tflite2onnx==0.4.1 tflite==2.18.0
    PYTHONPATH=/tmp/t2o:. python experiments/blazeface_onnx.py --convert   # remake, check, time
    python experiments/blazeface_onnx.py                                    # check and time

The converter is needed only to remake the file; fer_jax runs the .onnx with onnxruntime.
"""
import os
import sys
import tempfile
import time

import numpy as np

from fer_jax import faces

ONNX_PATH = os.path.join(os.path.dirname(faces.BLAZEFACE_PATH), 'blazeface_short_range.onnx')


def convert(tflite_path: str, onnx_path: str) -> None:
  import onnx
  from onnx import numpy_helper
  import tflite2onnx
  with tempfile.TemporaryDirectory() as folder:
    raw = os.path.join(folder, 'raw.onnx')
    tflite2onnx.convert(tflite_path, raw)
    model = onnx.load(raw)
  for init in model.graph.initializer:  # reshapes to [1, -1, C]: keep the batch instead (0)
    if init.name.startswith('TFLITE2ONNX_Vector_int64_[_1_-1'):
      shape = numpy_helper.to_array(init).copy()
      shape[0] = 0
      init.CopyFrom(numpy_helper.from_array(shape, init.name))
  for value in list(model.graph.input) + list(model.graph.output):
    value.type.tensor_type.shape.dim[0].dim_param = 'batch'
  del model.graph.value_info[:]
  onnx.checker.check_model(model)
  onnx.save(model, onnx_path)


def _ms_per_pass(run, batch: int, calls: int = 40) -> float:
  run()
  start = time.perf_counter()
  for _ in range(calls):
    run()
  return 1000 * (time.perf_counter() - start) / calls / batch


def main() -> None:
  import cv2
  import onnxruntime
  if '--convert' in sys.argv:
    convert(faces.BLAZEFACE_PATH, ONNX_PATH)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for side in (96, 128, 240, 640)]
  blob = cv2.dnn.blobFromImages(images, 1 / 127.5, (128, 128), (127.5, 127.5, 127.5), swapRB=False)
  net = cv2.dnn.readNetFromTFLite(faces.BLAZEFACE_PATH)
  session = onnxruntime.InferenceSession(ONNX_PATH, providers=['CPUExecutionProvider'])
  scores, boxes = session.run(['classificators', 'regressors'], {'input': blob})
  for i in range(len(images)):
    net.setInput(blob[i:i + 1])
    want_scores, want_boxes = net.forward(['classificators', 'regressors'])
    print(f'image {i}: largest difference, scores {np.abs(scores[i] - want_scores[0]).max():.1e}, '
          f'boxes {np.abs(boxes[i] - want_boxes[0]).max():.1e} (in 128-px input pixels)')
  cv2.setNumThreads(1)
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = options.inter_op_num_threads = 1
  session = onnxruntime.InferenceSession(ONNX_PATH, options, providers=['CPUExecutionProvider'])
  batch = np.repeat(blob[2:3], 8, 0)

  def opencv(size: int):
    for i in range(size):
      net.setInput(batch[i:i + 1])
      net.forward(['classificators', 'regressors'])
  for size in (1, 8):
    print(f'batch {size}: OpenCV DNN {_ms_per_pass(lambda: opencv(size), size):.2f} ms a pass, '
          f'onnxruntime {_ms_per_pass(lambda: session.run(None, {"input": batch[:size]}), size):.2f}')


if __name__ == '__main__':
  main()
