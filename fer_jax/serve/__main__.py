"""Serve a model over HTTP: the API, its OpenAPI page and a page for photos and the camera.

    python -m fer_jax.serve --pretrained                  # http://127.0.0.1:8000/
    python -m fer_jax.serve --workdir runs/quick --tta flip --port 8080
    python -m fer_jax.serve --pretrained --host 0.0.0.0 --cors_origins=https://example.org

Binds to 127.0.0.1 unless --host says otherwise (--port 0 picks a free port); CORS is off
unless --cors_origins names origins. Start-up compiles the model once for each batch size
(seconds); nothing is compiled while serving. Exit status (fer_jax.cli): 1 when the model cannot
be loaded or the port is taken, 2 for a wrong command line, 130 / 143 when stopped by Ctrl-C /
SIGTERM (requests in flight are answered first). Docs: docs/serve.md.
"""
import hashlib
import socket
import sys
from typing import Any

from absl import app, flags

from fer_jax import FerJaxError, Interrupted, cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so importing this module defines no global flags."""
  flags.DEFINE_string('workdir', None, 'Training workdir holding checkpoints/.')
  flags.DEFINE_string('checkpoint', 'best', '"best", "latest" or a step number (with --workdir).')
  flags.DEFINE_bool('pretrained', False, 'Serve the weights that ship with fer_jax.')
  flags.DEFINE_enum('tta', 'flip', ['none', 'flip', 'ten_crop'], 'Test-time augmentation for '
                    'every face: flip by default (what predict gives faces found in photos, '
                    'docs/photos.md), ten_crop the most accurate on face crops, none the fastest.')
  flags.DEFINE_enum('detector', 'blazeface', ['blazeface', 'haar'], 'Face detector for photos.')
  flags.DEFINE_bool('no_align', False, 'Do not turn crops so the eyes are level.')
  flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on (0.0.0.0: every interface).')
  flags.DEFINE_integer('port', 8000, 'Port to listen on; 0 picks a free one (printed).')
  flags.DEFINE_float('max_upload_mb', 20.0, 'Largest request body accepted, in MB (413 above).')
  flags.DEFINE_float('batch_wait_ms', 5.0, 'How long a request waits for others to share its '
                     'compiled call.')
  flags.DEFINE_integer('max_batch_faces', 64, 'Most faces in one compiled call (the batch sizes '
                       'are those of the Predictor\'s buckets up to this).')
  flags.DEFINE_list('cors_origins', [], 'Origins allowed to call the API from their pages (CORS); '
                    'empty: CORS off.')


def model_info(predictor: Any, source: str) -> dict[str, Any]:
  """What GET /v1/model says beyond the predictor's settings: the model's name, its version (the
  first 12 hex digits of the SHA-256 of its variables), parameter count and source."""
  import jax
  import numpy as np
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(predictor.variables))
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(leaf, np.float32).tobytes())
  name = predictor.model_config.name
  parameters = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(
      predictor.variables['params']))
  return {'name': name, 'version': f'{name}-{digest.hexdigest()[:12]}', 'parameters': parameters,
          'source': source}


def bind(host: str, port: int) -> socket.socket:
  """A listening socket, or one sentence when the address is taken or not this machine's."""
  try:
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
  except OSError as e:
    raise FerJaxError(f'cannot listen on {host}:{port} ({e.strerror or e}); pass another --port '
                      '(0 picks a free one) or --host.') from None
  return sock


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'serve takes no file arguments ({" ".join(argv[1:])}); images are sent '
                         'to its API or page.')
  if bool(FLAGS.workdir) == FLAGS.pretrained:
    raise app.UsageError('give either --workdir (a training workdir) or --pretrained.')
  if not FLAGS.max_upload_mb > 0:
    raise app.UsageError(f'--max_upload_mb={FLAGS.max_upload_mb} must be positive.')
  if FLAGS.max_batch_faces < 1:
    raise app.UsageError(f'--max_batch_faces={FLAGS.max_batch_faces} must be at least 1.')
  if not 0 <= FLAGS.batch_wait_ms <= 1000:
    raise app.UsageError(f'--batch_wait_ms={FLAGS.batch_wait_ms} must be in [0, 1000].')
  sock = bind(FLAGS.host, FLAGS.port)  # a taken port is told before the model loads
  import uvicorn
  from fer_jax.predictor import Predictor
  from fer_jax.serve.app import create_app
  from fer_jax.serve.batching import Batcher
  options = dict(tta=FLAGS.tta, detector=FLAGS.detector, align=not FLAGS.no_align)
  if FLAGS.pretrained:
    predictor, source = Predictor.pretrained(**options), 'the weights shipped with fer_jax'
  else:
    predictor = Predictor.from_workdir(FLAGS.workdir, FLAGS.checkpoint, **options)
    source = f'{FLAGS.workdir} (checkpoint {FLAGS.checkpoint})'
  batcher = Batcher(predictor, FLAGS.batch_wait_ms / 1e3, FLAGS.max_batch_faces)
  print(f'compiling the model for batches of {", ".join(map(str, batcher.sizes))} faces '
        '(once)...', file=sys.stderr, flush=True)
  batcher.start()
  server = uvicorn.Server(uvicorn.Config(
      create_app(batcher, model_info(predictor, source), int(FLAGS.max_upload_mb * 2 ** 20),
                 FLAGS.cors_origins),
      log_level='warning', access_log=False, timeout_graceful_shutdown=10))
  host, port = sock.getsockname()[:2]
  shown = f'[{host}]' if ':' in host else host
  print(f'serving on http://{shown}:{port}/ (the page; the API is described at /docs); '
        'Ctrl-C stops', flush=True)
  try:
    server.run(sockets=[sock])
  except KeyboardInterrupt as e:
    raise Interrupted('the server stopped after answering the requests in flight.', e) from None
  finally:
    batcher.stop()


if __name__ == '__main__':
  define_flags()
  cli.run(main)
