"""The emotion of every face in photos with the exported ONNX model and onnxruntime: no JAX.

    python -m fer_jax.export --pretrained --out fer.onnx
    python -m fer_jax.onnx_predict fer.onnx photo.jpg [more photos]

Faces are found and framed by fer_jax.faces.face_crops (BlazeFace through OpenCV, the same crops
`predict` makes), and classified by the ONNX graph fer_jax.export writes (input `faces` uint8
[batch, 48, 48, 1]; output `probabilities`, calibrated, classes in the order of the model's
`labels` metadata). Prints one line per face: file, face, box (x, y, w, h), emotion, confidence.
The probabilities are Predictor's with --tta none (fer_jax.export checks the two agree).
A deployment needs numpy, Pillow, OpenCV and onnxruntime, and this package only for its face
crops; docs/deploy.md shows the same in a few lines of Python. Exit status (fer_jax.cli): 0 when
every photo gave its faces, 1 otherwise, 2 for a wrong command line.
"""
import json
import sys
from typing import Any

from absl import app, flags

from fer_jax import FerJaxError, cli


def load_session(path: str) -> tuple[Any, list[str]]:
  """(onnxruntime session on the CPU, class names from the model's metadata)."""
  try:
    import onnxruntime
  except ImportError:
    raise FerJaxError('the ONNX model runs on onnxruntime: pip install onnxruntime (or '
                      '"fer_jax[export]").') from None
  try:
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  except Exception as e:  # onnxruntime raises its own exception types for a missing or bad file
    raise FerJaxError(f'{path} cannot be loaded by onnxruntime ({str(e).strip().splitlines()[0]}); '
                      'pass a file written by python -m fer_jax.export.') from None
  labels = json.loads(session.get_modelmeta().custom_metadata_map.get('labels', 'null') or 'null')
  if not labels:
    raise FerJaxError(f'{path} has no `labels` metadata; pass a file written by python -m '
                      'fer_jax.export.')
  return session, labels


def classify(session: Any, labels: list[str], image: Any) -> list[dict]:
  """Every face of an image (a path, PIL image or array) as {face, box, emotion, confidence,
  probabilities}, largest face first; [] when none is found."""
  from fer_jax.data.images import load_image
  from fer_jax.faces import face_crops
  crops, boxes = face_crops(*load_image(image))
  if not len(crops):
    return []
  probabilities = session.run(['probabilities'], {'faces': crops[..., None]})[0]
  return [{'face': index, 'box': box, 'emotion': labels[int(p.argmax())],
           'confidence': float(p.max()), 'probabilities': dict(zip(labels, p.tolist()))}
          for index, (p, box) in enumerate(zip(probabilities, boxes))]


def main(argv: list[str]) -> None:
  if len(argv) < 3:
    raise app.UsageError('give the ONNX file, then at least one photo.')
  session, labels = load_session(argv[1])
  failures = 0
  for path in argv[2:]:
    try:
      rows = classify(session, labels, path)
      if not rows:
        raise FerJaxError('no face found; pass a photo with a face in it.')
    except FerJaxError as e:
      failures += 1
      print(f'error: {e}' if path in str(e) else f'error: {path}: {e}', file=sys.stderr)
      continue
    for row in rows:
      box = ', '.join(map(str, row['box'])) if row['box'] else 'whole image'
      print(f'{path}  face {row["face"]}  box {box}  {row["emotion"]} {row["confidence"]:.3f}')
  if failures:
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main, fast_cpu=None, uses_jax=False)
