"""The HTTP API and the page: a FastAPI app over one `Predictor` and its `Batcher`.

    POST /v1/predict   images (multipart field `file`, one or several, or the raw body) -> every
                       face's box, emotion, confidence and probabilities (predict --json's rows)
                       (?explain=grad_cam adds each face's saliency map)
    GET  /v1/model     labels, TTA, temperature, parameters, where the weights came from
    GET  /healthz      liveness and counters (requests, compiled calls, compilations since start)
    GET  /             the page (static/index.html, static/app.js); GET /docs the OpenAPI page
                     (its scripts served by the app too, through fastapi-offline)

An image is read by fer_jax.data.images.load_image and its faces found by
fer_jax.faces.face_crops, as `predict` does; the crops of concurrent requests are classified
together by the Batcher. Every refused request is a 4xx with {"error": "<one sentence>"}; no
path is ever taken from a client.
"""
import asyncio
import dataclasses
import logging
import os
import threading
import time
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from fer_jax import FerJaxError, faces
from fer_jax.data.images import load_image
from fer_jax.predict import face_rows
from fer_jax.serve.batching import Batcher

EXPLAIN_METHODS = ('grad_cam', 'integrated_gradients')
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')
MAX_FILES = 32  # images in one request
FILE_FIELDS = ('file', 'files')
_log = logging.getLogger(__name__)


class RequestError(Exception):
  """A request the API refuses: its HTTP status and the sentence the client gets."""

  def __init__(self, status: int, sentence: str):
    super().__init__(sentence)
    self.status = status


class Face(BaseModel):
  file: str | None
  face: int
  box: list[int] | None
  emotion: str
  confidence: float
  probabilities: dict[str, float]


class ExplainedFace(Face):
  """A face with its saliency map (?explain=): 48x48 values on the face crop's grid (Grad-CAM
  in [0, 1] after ReLU; integrated gradients signed) and the square [x0, y0, side] of the image
  that crop covers, to draw the map over the photo (null when the whole image was the face: the
  map then covers the image, stretched to its shape)."""
  saliency: list[list[float]]
  crop_square: list[float] | None


class Image(BaseModel):
  file: str | None
  width: int
  height: int
  faces: int


class Predictions(BaseModel):
  faces: list[ExplainedFace | Face]
  images: list[Image]
  labels: list[str]
  model: str
  ms: float


class Error(BaseModel):
  error: str


_ERRORS = {status: {'model': Error, 'description': what} for status, what in (
    (400, 'empty body, unknown form field, too many files'),
    (413, 'body over --max_upload_mb'),
    (415, 'a form-encoded or JSON body instead of an image'),
    (422, 'not an image, damaged, more pixels than fer_jax decodes, or a bad query parameter'))}

_UPLOAD_BODY = {'requestBody': {'required': True, 'content': {
    'multipart/form-data': {'schema': {'type': 'object', 'required': ['file'], 'properties': {
        'file': {'type': 'array', 'items': {'type': 'string', 'format': 'binary'},
                 'description': 'one or several images (PNG, JPEG, WebP, HEIC, ...)'}}}},
    'image/*': {'schema': {'type': 'string', 'format': 'binary'}},
    'application/octet-stream': {'schema': {'type': 'string', 'format': 'binary'}}}}}


async def read_body(request: Request, max_bytes: int) -> bytes:
  """The request body, refused with 413 once it passes `max_bytes` (read no further)."""
  too_large = RequestError(413, f'the request body is over the server\'s limit of '
                                f'{max_bytes / 2 ** 20:g} MB; send a smaller image (or start the '
                                'server with a larger --max_upload_mb).')
  declared = request.headers.get('content-length', '')
  if declared.isdigit() and int(declared) > max_bytes:
    raise too_large
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > max_bytes:
      raise too_large
    chunks.append(chunk)
  return b''.join(chunks)


async def read_images(request: Request, max_bytes: int) -> list[tuple[str | None, bytes]]:
  """(file name or None, bytes) of each image of a multipart body (field `file`) or a raw one."""
  kind = request.headers.get('content-type', '').split(';')[0].strip().lower()
  if kind in ('application/x-www-form-urlencoded', 'application/json', 'text/plain'):
    raise RequestError(415, f'a body of type {kind} is not an image; send the image as '
                            'multipart/form-data '
                            '(curl -F file=@photo.jpg) or as the raw body (curl --data-binary '
                            '@photo.jpg -H "Content-Type: image/jpeg").')
  body = await read_body(request, max_bytes)
  if not body:
    raise RequestError(400, 'the request body is empty; send an image (curl -F file=@photo.jpg).')
  if kind != 'multipart/form-data':
    return [(None, body)]

  async def replay() -> dict[str, Any]:
    return {'type': 'http.request', 'body': body, 'more_body': False}

  try:
    form = await Request(request.scope, replay).form(max_files=MAX_FILES, max_fields=MAX_FILES)
  except HTTPException as e:
    raise RequestError(400, f'the multipart body could not be read ({e.detail.rstrip(".")}); send '
                            'the images with curl -F file=@photo.jpg.') from None
  images = []
  for field, value in form.multi_items():
    if field not in FILE_FIELDS or not isinstance(value, UploadFile):
      what = 'file' if isinstance(value, UploadFile) else 'text field'
      raise RequestError(400, f'the form has a {what} named {field!r}, which the API does not '
                              'take; send each image as a file in the field named "file".')
    images.append((value.filename, await value.read()))
  if not images:
    raise RequestError(400, 'the form holds no file; send each image as a file in the field '
                            'named "file" (curl -F file=@photo.jpg).')
  return images


_PARAMETER_VALUES = {'detect': 'true or false', 'explain': ' or '.join(EXPLAIN_METHODS)}


def _validation_sentence(error: RequestValidationError) -> str:
  first = error.errors()[0]
  where = first.get('loc', ('query', '?'))
  name = where[-1] if where else '?'
  return (f'the {where[0]} parameter {name}={first.get("input")!r} is not valid '
          f'({first.get("msg", "invalid").rstrip(".").lower()}); use '
          f'{_PARAMETER_VALUES.get(name, "a valid value")} for {name}.')


def create_app(batcher: Batcher, model_info: dict[str, Any], max_upload_bytes: int,
               cors_origins: list[str] | tuple[str, ...] = ()) -> FastAPI:
  """The app serving `batcher.predictor`; `model_info` is what GET /v1/model adds to the
  predictor's own settings (version, parameters, source). CORS is off unless `cors_origins`."""
  predictor = batcher.predictor
  detecting = threading.Lock()  # one OpenCV detector network, shared: one search at a time
  model = {'labels': predictor.labels, 'tta': predictor.tta,
           'temperature': predictor.temperature_for(predictor.tta),  # the one its TTA uses
           'detector': predictor.detector, 'align': predictor.align,
           'batch_sizes': batcher.sizes,
           'call_ms': {size: round(1e3 * cost, 1) for size, cost in batcher.costs.items()},
           'max_upload_mb': max_upload_bytes / 2 ** 20, **model_info}
  # fastapi-offline serves the OpenAPI pages' scripts itself (FastAPI's own load from a CDN).
  app = FastAPIOffline(title='fer_jax', version=model_info.get('version', ''),
                       description='Facial expressions of every face in an image. The page is '
                                   'at `/`.')
  if cors_origins:
    from fastapi.middleware.cors import CORSMiddleware
    app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                       allow_methods=['GET', 'POST'], allow_headers=['*'])

  @app.exception_handler(RequestError)
  async def refused(request: Request, e: RequestError) -> JSONResponse:
    return JSONResponse({'error': str(e)}, status_code=e.status)

  @app.exception_handler(RequestValidationError)
  async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    return JSONResponse({'error': _validation_sentence(e)}, status_code=422)

  @app.exception_handler(HTTPException)
  async def http_error(request: Request, e: HTTPException) -> JSONResponse:
    if e.status_code == 404:
      sentence = (f'there is nothing at {request.url.path}; the API is POST /v1/predict, '
                  'GET /v1/model and GET /healthz (see /docs).')
    elif e.status_code == 405:
      sentence = f'{request.method} is not allowed on {request.url.path}; see /docs for its method.'
    else:
      sentence = str(e.detail).rstrip('.') + '.'
    return JSONResponse({'error': sentence}, status_code=e.status_code, headers=e.headers)

  @app.exception_handler(Exception)
  async def failed(request: Request, e: Exception) -> JSONResponse:
    _log.exception('request to %s failed', request.url.path)
    return JSONResponse({'error': f'the server failed on this request ({type(e).__name__}); it '
                                  'keeps serving; please report it with the image.'},
                        status_code=500)

  def find(data: bytes, detect: bool | None) -> tuple[np.ndarray, list, tuple[int, int]]:
    """Predictor.find_faces, with the image decoded outside the detector's lock."""
    rgb, grey, scale = load_image(data)
    with detecting:
      crops, boxes = faces.face_crops(rgb, grey, scale, detect, predictor.detector,
                                      predictor.align)
    return crops, boxes, (int(round(grey.shape[1] * scale)), int(round(grey.shape[0] * scale)))

  def saliency(crops: np.ndarray, boxes: list, probabilities: np.ndarray,
               method: str) -> list[dict[str, Any]]:
    """Each face's map for its predicted class (Predictor.explain) and its crop's square (None
    for a whole image taken as the face: the map covers the image, stretched to its shape)."""
    from fer_jax.explain_figures import crop_square
    # One face a call: one compiled shape, whatever the count (the first request compiles it).
    maps = [predictor.explain(crops[i:i + 1], probabilities[i:i + 1].argmax(-1), method)[0]
            for i in range(len(crops))]
    return [{'saliency': np.round(np.asarray(m, np.float64), 4).tolist(),
             'crop_square': None if box is None else [
                 round(float(v), 2) for v in crop_square(box, predictor.detector)]}
            for m, box in zip(maps, boxes)]

  async def classify(name: str | None, data: bytes, detect: bool | None, explain: str | None
                     ) -> tuple[list[dict], dict]:
    try:
      crops, boxes, (width, height) = await run_in_threadpool(find, data, detect)
    except FerJaxError as e:
      sentence = str(e)
      raise RequestError(422, f'{name}: {sentence}' if name else sentence) from None
    probabilities = await asyncio.wrap_future(batcher.submit(crops))
    found = [dataclasses.replace(predictor.to_prediction(p), box=box)
             for p, box in zip(probabilities, boxes)]
    rows = [{'file': name, **row} for row in face_rows(found)]
    if explain and rows:
      maps = await run_in_threadpool(saliency, crops, boxes, np.asarray(probabilities), explain)
      rows = [{**row, **extra} for row, extra in zip(rows, maps)]
    return rows, {'file': name, 'width': width, 'height': height, 'faces': len(rows)}

  @app.post('/v1/predict', response_model=Predictions, responses=_ERRORS,
            openapi_extra=_UPLOAD_BODY)
  async def predict(request: Request, detect: bool | None = None,
                    explain: Literal[EXPLAIN_METHODS] | None = None) -> dict[str, Any]:
    """Every face in one or several images, largest first in each. `detect=false` takes each
    image as a face crop; `detect=true` always searches; unset, images up to 64 px are crops
    (the rule of `python -m fer_jax.predict`). Boxes are (x, y, w, h) in the image's pixels.
    `explain=grad_cam` (about 35 ms a face on a CPU) or `integrated_gradients` (64 steps, seconds)
    adds each face's saliency map for its emotion (fer_jax.explain) and the square it covers."""
    start = time.perf_counter()
    images = await read_images(request, max_upload_bytes)
    results = await asyncio.gather(*(classify(name, data, detect, explain)
                                     for name, data in images))
    return {'faces': [row for rows, _ in results for row in rows],
            'images': [image for _, image in results], 'labels': predictor.labels,
            'model': model.get('version', ''), 'ms': round((time.perf_counter() - start) * 1e3, 2)}

  @app.get('/v1/model')
  async def model_card() -> dict[str, Any]:
    """The model served: labels, TTA, temperature, parameter count, version and source; the
    batch sizes of its compiled calls and what a call of each took at start-up (call_ms)."""
    return model

  @app.get('/healthz')
  async def health() -> dict[str, Any]:
    """'ok' while serving, with the batcher's counters (compiles counts compilations since
    start-up: 0 while serving normally)."""
    return {'status': 'ok', **batcher.stats}

  @app.get('/', include_in_schema=False)
  async def page() -> FileResponse:
    return FileResponse(os.path.join(STATIC_DIR, 'index.html'))

  app.mount('/static', StaticFiles(directory=STATIC_DIR), name='static')
  return app
