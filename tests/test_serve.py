"""The HTTP API on a real server (`python -m fer_jax.serve` in a subprocess, one per module): the
same rows as `predict --json`, several images, face crops, batching across concurrent requests
with nothing compiled while serving, and bad requests answered in one sentence between good ones.
"""
import concurrent.futures
import io
import json
import os
import socket
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

httpx = pytest.importorskip('httpx', reason='the serve tests need fer_jax[test] (httpx)')
pytest.importorskip('fastapi', reason='the serve tests need fer_jax[serve] (fastapi, uvicorn)')

from fer_jax.serve import batching, load  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_UPLOAD_MB = 1


@pytest.fixture(scope='module')
def server():
  """One server for the module: the shipped model, a 1 MB upload limit (so the over-size request
  is small), a 50 ms batch wait (so concurrent requests surely share batches) and calls of up to
  6 faces (the 51-face size takes seconds to compile)."""
  with load.running_server(['--pretrained', f'--max_upload_mb={MAX_UPLOAD_MB}',
                            '--batch_wait_ms=50', '--max_batch_faces=6']) as (url, _):
    yield url


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """The astronaut (one smiling face) as a PNG, and her face as a 48x48 crop."""
  folder = tmp_path_factory.mktemp('serve_photos')
  photo = skimage_data.astronaut()
  Image.fromarray(photo).save(folder / 'astronaut.png')
  Image.fromarray(photo[60:190, 160:290]).convert('L').resize((48, 48), Image.BOX).save(
      folder / 'face.png')
  return folder / 'astronaut.png', folder / 'face.png'


def post(url, files=None, **kwargs):
  if files is not None:
    kwargs['files'] = [('file', (os.path.basename(f), open(f, 'rb').read())) for f in files]
  return httpx.post(f'{url}/v1/predict', timeout=120, **kwargs)


def test_a_photo_gets_the_rows_predict_json_gives(server, photos):
  astronaut, _ = photos
  cli = subprocess.run([sys.executable, '-m', 'fer_jax.predict', '--pretrained', '--json',
                        str(astronaut)], capture_output=True, text=True, cwd=REPO, timeout=600)
  assert cli.returncode == 0, cli.stderr
  expected = [json.loads(line) for line in cli.stdout.splitlines()]
  answer = post(server, [astronaut])
  assert answer.status_code == 200, answer.text
  got = answer.json()
  assert [row['file'] for row in got['faces']] == ['astronaut.png']
  assert len(got['faces']) == len(expected) == 1
  for served, printed in zip(got['faces'], expected):
    assert {k: v for k, v in served.items() if k != 'probabilities'} == {
        **{k: v for k, v in printed.items() if k != 'probabilities'}, 'file': 'astronaut.png'}
    # Same faces, padded into another batch size: equal to the printed 6 places.
    for label, p in printed['probabilities'].items():
      assert served['probabilities'][label] == pytest.approx(p, abs=2e-6)
  assert got['faces'][0]['emotion'] == 'happy'
  assert got['images'] == [{'file': 'astronaut.png', 'width': 512, 'height': 512, 'faces': 1}]
  model = httpx.get(f'{server}/v1/model').json()
  assert got['labels'] == model['labels'] == list(printed['probabilities'])
  assert got['model'] == model['version'] and got['ms'] > 0
  assert model['tta'] == 'flip' and model['parameters'] > 1e6 and model['temperature'] > 0


def test_several_images_give_one_row_per_face_and_a_raw_body_the_same(server, photos):
  astronaut, face = photos
  both = post(server, [astronaut, face]).json()
  assert [(row['file'], row['face']) for row in both['faces']] == [('astronaut.png', 0),
                                                                   ('face.png', 0)]
  assert both['faces'][1]['box'] is None  # 48 px: a face crop, as predict takes it
  assert [(i['width'], i['height'], i['faces']) for i in both['images']] == [(512, 512, 1),
                                                                             (48, 48, 1)]
  raw = post(server, content=open(astronaut, 'rb').read(),
             headers={'Content-Type': 'image/png'}).json()
  assert raw['faces'][0]['file'] is None
  assert {**raw['faces'][0], 'file': 'astronaut.png'} == both['faces'][0]


def test_detect_false_takes_the_whole_image_as_the_face(server, photos):
  astronaut, _ = photos
  answer = post(server, [astronaut], params={'detect': 'false'}).json()
  assert [row['box'] for row in answer['faces']] == [None]
  no_face = io.BytesIO()
  Image.new('RGB', (400, 300), (90, 120, 200)).save(no_face, 'PNG')
  answer = post(server, content=no_face.getvalue(), params={'detect': 'true'})
  assert answer.status_code == 200 and answer.json()['faces'] == []
  assert answer.json()['images'][0]['faces'] == 0


def huge_png(width: int, height: int) -> bytes:
  """A PNG whose header states width x height pixels (its data is a 1x1 image's): refused from
  the header alone, before anything is decoded."""
  buffer = io.BytesIO()
  Image.new('L', (1, 1)).save(buffer, 'PNG')
  data = buffer.getvalue()
  chunk = b'IHDR' + struct.pack('>II', width, height) + data[24:29]
  return data[:8] + struct.pack('>I', 13) + chunk + struct.pack('>I', zlib.crc32(chunk)) + data[33:]


def test_bad_requests_are_one_sentence_and_the_server_keeps_serving(server, photos):
  astronaut, _ = photos
  png = open(astronaut, 'rb').read()
  over_limit = png + b'\0' * (MAX_UPLOAD_MB * 2 ** 20)

  def chunks():
    for start in range(0, len(over_limit), 2 ** 16):
      yield over_limit[start:start + 2 ** 16]

  bad = [  # (what, request, status, words the sentence holds)
      ('not an image', lambda: post(server, files=[__file__]), 422, 'test_serve.py'),
      ('empty body', lambda: post(server, content=b''), 400, 'empty'),
      ('empty file', lambda: httpx.post(f'{server}/v1/predict', files=[('file', ('e.png', b''))]),
       422, 'e.png'),
      ('over the limit', lambda: post(server, content=over_limit), 413, 'limit'),
      ('over the limit, chunked', lambda: post(server, content=chunks()), 413, 'limit'),
      ('too many pixels', lambda: post(server, content=huge_png(20000, 10000)), 422, 'MP'),
      ('truncated', lambda: post(server, content=png[:len(png) // 3]), 422, 'truncated'),
      ('wrong field', lambda: httpx.post(f'{server}/v1/predict',
                                         files=[('photo', ('a.png', png))]), 400, "'photo'"),
      ('a text field', lambda: httpx.post(f'{server}/v1/predict', data={'file': 'a.png'},
                                          files=[('x', ('a.png', png))]), 400, 'field'),
      ('form-encoded', lambda: post(server, data={'file': 'astronaut.png'}), 415, 'multipart'),
      ('bad detect', lambda: post(server, content=png, params={'detect': 'maybe'}), 422,
       'detect'),
      ('unknown path', lambda: httpx.get(f'{server}/v1/predictions'), 404, '/v1/predict'),
      ('wrong method', lambda: httpx.get(f'{server}/v1/predict'), 405, 'GET'),
  ]
  for what, send, status, words in bad:
    answer = send()
    assert answer.status_code == status, (what, answer.text)
    body = answer.json()
    assert list(body) == ['error'], what
    sentence = body['error']
    assert words in sentence and sentence.endswith('.') and '\n' not in sentence, (what, sentence)
    assert 'Traceback' not in sentence and '/tmp' not in sentence, (what, sentence)
    good = post(server, content=png, headers={'Content-Type': 'image/png'})
    assert good.status_code == 200 and good.json()['faces'][0]['emotion'] == 'happy', what
  assert httpx.get(f'{server}/healthz').json()['status'] == 'ok'


def test_cors_is_off_unless_asked(server):
  answer = httpx.get(f'{server}/v1/model', headers={'Origin': 'https://example.org'})
  assert answer.status_code == 200 and 'access-control-allow-origin' not in answer.headers


def test_concurrent_requests_share_compiled_calls_and_nothing_compiles(server, photos):
  _, face = photos
  crop = open(face, 'rb').read()
  before = httpx.get(f'{server}/healthz').json()
  with concurrent.futures.ThreadPoolExecutor(12) as pool:
    answers = list(pool.map(lambda _: post(server, content=crop, params={'detect': 'false'}),
                            range(12)))
  rows = [a.json()['faces'] for a in answers]
  assert all(a.status_code == 200 for a in answers)
  for row in rows:  # the same answer in whichever batch size a request's face went
    assert [r['emotion'] for r in row] == ['happy']
    assert row[0]['probabilities'] == pytest.approx(rows[0][0]['probabilities'], abs=2e-6)
  after = httpx.get(f'{server}/healthz').json()
  assert after['requests'] - before['requests'] == 12
  assert after['batches'] - before['batches'] < 12  # some requests were classified together
  assert after['compiles'] == 0  # every batch size was compiled at start-up
  assert httpx.get(f'{server}/v1/model').json()['batch_sizes'] == [1, 5]  # flip: 2 views a face


def test_faces_go_in_the_calls_that_cost_least():
  # Padding is nearly free (an accelerator): one call of 6 for 2 to 6 faces.
  plans = batching.cheapest_chunks({1: 1.0, 6: 1.1, 51: 1.5})
  assert plans[1] == [1] and plans[2] == plans[6] == [6] and plans[7] == plans[51] == [51]
  # Cost in proportion to the padded views (a busy CPU): no padding where calls of 1 cost less.
  plans = batching.cheapest_chunks({1: 10.0, 6: 48.0, 51: 400.0})
  assert plans[2] == [1, 1] and plans[5] == plans[6] == [6] and plans[13] == [6, 6, 1]
  assert all(sum(plan) >= count for count, plan in enumerate(plans))


def test_load_run_accounts_for_every_request(server):
  image, query = load.workloads()['face crop']
  row = load.hammer(server, image, query, clients=4, requests=8, max_seconds=120,
                    emotion='happy')
  assert (row['sent'], row['answered'], row['failed'], row['lost']) == (8, 8, 0, 0)
  assert row['other_emotion'] == 0 and row['p99_ms'] >= row['p50_ms'] > 0


def test_a_taken_port_and_a_missing_model_are_one_line(photos):
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    run = subprocess.run([sys.executable, '-m', 'fer_jax.serve', '--pretrained', f'--port={port}'],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines() == [run.stderr.strip()]
  assert run.stderr.startswith(f'error: cannot listen on 127.0.0.1:{port}')
  run = subprocess.run([sys.executable, '-m', 'fer_jax.serve'], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
  assert run.returncode == 2 and 'either --workdir' in run.stderr
  assert np.all([line.startswith('error:') for line in run.stderr.strip().splitlines()])


def test_explain_adds_each_faces_map_as_the_library_computes_it(server, photos):
  """Last in the module: the first explained request compiles the map (the compile count above
  is of plain requests)."""
  from fer_jax.explain_figures import crop_square
  from fer_jax.predictor import Predictor
  astronaut, _ = photos
  answer = post(server, [astronaut], params={'explain': 'grad_cam'})
  assert answer.status_code == 200, answer.text
  face = answer.json()['faces'][0]
  predictor = Predictor.pretrained(tta='flip')
  crops, boxes = predictor.find_faces(str(astronaut))
  expected = predictor.explain(crops[:1], predictor.probabilities(crops[:1]).argmax(-1))[0]
  assert face['box'] == list(boxes[0]) and face['emotion'] == 'happy'
  np.testing.assert_allclose(face['saliency'], expected, atol=2e-4)
  assert face['crop_square'] == pytest.approx(crop_square(boxes[0], predictor.detector), abs=0.01)
  assert all(v == round(v, 4) for line in face['saliency'] for v in line)
  assert 'saliency' not in post(server, [astronaut]).json()['faces'][0]  # only when asked
  whole = post(server, [photos[1]], params={'explain': 'grad_cam', 'detect': 'false'}).json()
  assert whole['faces'][0]['crop_square'] is None  # the map covers the whole image
  refused = post(server, [astronaut], params={'explain': 'shap'})
  assert refused.status_code == 422
  assert refused.json()['error'] == (
      "the query parameter explain='shap' is not valid (input should be 'grad_cam' or "
      "'integrated_gradients'); use grad_cam or integrated_gradients for explain.")
