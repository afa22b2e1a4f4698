"""The server under load, beside the same images through one `Predictor` call each, in one run.

    python -m fer_jax.bench --serve [--json_out=serve_load.json]

The baseline: each workload's image (a 512x512 photo with one face, searched; a 48x48 face crop,
`detect=false`) through `Predictor.predict_faces` in this process, one call per image, with no
server up. Then `python -m fer_jax.serve --pretrained` on 127.0.0.1 (a free port), as shipped
and with one compiled call per face (SERVERS), each under 1, 4 and 16 concurrent clients, each
level bounded in requests and in seconds: requests/s, p50 / p99 latency, and every request
accounted for (answered with the baseline's emotion, failed, or lost). Each server's resident
memory is read after its start-up and at the end. The clients run in this process, on the same
CPU as the server.
"""
import concurrent.futures
import contextlib
import io
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterator

import numpy as np

from fer_jax import FerJaxError

CLIENTS = (1, 4, 16)


@contextlib.contextmanager
def running_server(args: list[str], timeout_s: float = 600.0) -> Iterator[tuple[str, int]]:
  """`python -m fer_jax.serve <args> --port=0` in a subprocess: yields (its URL, its pid) once it
  serves, and stops it with SIGTERM afterwards. What it wrote on stderr is passed on to this
  process's stderr at the end, except its start-up and stop lines."""
  log = tempfile.TemporaryFile('w+')
  process = subprocess.Popen([sys.executable, '-m', 'fer_jax.serve', *args, '--port=0'],
                             stdout=subprocess.PIPE, stderr=log, text=True)
  lines: queue.Queue = queue.Queue()
  threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put('')],
                   daemon=True).start()
  try:
    deadline, url = time.monotonic() + timeout_s, None
    while url is None:
      try:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
      except queue.Empty:
        raise FerJaxError(f'the server did not start within {timeout_s:.0f} s.') from None
      if not line:
        raise FerJaxError(f'the server exited with status {process.wait()} before serving; its '
                          'error line is on stderr.')
      if line.startswith('serving on '):
        url = line.split()[2].rstrip('/')
    yield url, process.pid
  finally:
    if process.poll() is None:
      process.send_signal(signal.SIGTERM)
      try:
        process.wait(30)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.seek(0)
    for line in log:
      if not line.startswith(('compiling the model', 'error: interrupted by SIGTERM')):
        sys.stderr.write(line)
    log.close()


def rss_mb(pid: int) -> float | None:
  """Resident memory of a process in MiB (Linux /proc), None where unknown."""
  with contextlib.suppress(OSError, ValueError, IndexError):
    with open(f'/proc/{pid}/status') as f:
      line = next(line for line in f if line.startswith('VmRSS:'))
    return int(line.split()[1]) / 1024
  return None


def workloads() -> dict[str, tuple[bytes, dict[str, str]]]:
  """(PNG bytes, query) of each workload: scikit-image's astronaut (one face, searched) and her
  face as a 48x48 crop (taken as a face)."""
  from PIL import Image
  try:
    from skimage import data as skimage_data
  except ImportError:
    raise FerJaxError('the load test sends scikit-image\'s sample photo; pip install '
                      'scikit-image (in fer_jax[test]).') from None
  photo = skimage_data.astronaut()
  crop = Image.fromarray(photo[60:190, 160:290]).convert('L').resize((48, 48), Image.BOX)
  out = {}
  for name, image, query in (('photo', Image.fromarray(photo), {}),
                             ('face crop', crop, {'detect': 'false'})):
    buffer = io.BytesIO()
    image.save(buffer, 'PNG')
    out[name] = (buffer.getvalue(), query)
  return out


def baseline(predictor: Any, image: bytes, detect: bool | None, calls: int) -> dict[str, Any]:
  """One `predict_faces` call per image in this process: calls/s, p50 latency, the emotion."""
  predictor.predict_faces(image, detect)  # warm-up
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    found = predictor.predict_faces(image, detect)
    times.append(time.perf_counter() - start)
  return {'calls': calls, 'per_second': round(calls / sum(times), 2),
          'p50_ms': round(1e3 * float(np.median(times)), 1),
          'emotion': found[0].emotion if found else None}


def hammer(url: str, image: bytes, query: dict[str, str], clients: int, requests: int,
           max_seconds: float, emotion: str | None) -> dict[str, Any]:
  """`requests` POSTs from `clients` threads (each with its own connection), none started after
  `max_seconds`: requests/s, p50 / p99 latency, and every request sent accounted for."""
  import httpx
  sent, latencies, failures, wrong = [0], [], [], [0]
  lock = threading.Lock()
  deadline = time.monotonic() + max_seconds

  def client() -> None:
    with httpx.Client(timeout=120.0) as session:
      while True:
        with lock:
          if sent[0] >= requests or time.monotonic() > deadline:
            return
          sent[0] += 1
        start = time.perf_counter()
        try:
          answer = session.post(f'{url}/v1/predict', params=query, content=image,
                                headers={'Content-Type': 'image/png'})
          elapsed = time.perf_counter() - start
          if answer.status_code != 200:
            raise RuntimeError(f'{answer.status_code} {answer.text[:200]}')
          faces = answer.json()['faces']
        except Exception as e:  # counted and shown, not raised: the run goes on
          with lock:
            failures.append(str(e))
          continue
        with lock:
          latencies.append(elapsed)
          wrong[0] += not faces or faces[0]['emotion'] != emotion

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    for future in [pool.submit(client) for _ in range(clients)]:
      future.result()
  wall = time.perf_counter() - start
  answered = len(latencies)
  return {'clients': clients, 'sent': sent[0], 'answered': answered, 'failed': len(failures),
          'lost': sent[0] - answered - len(failures), 'other_emotion': wrong[0],
          'requests_per_second': round(answered / wall, 2),
          'p50_ms': round(1e3 * float(np.percentile(latencies, 50)), 1) if latencies else None,
          'p99_ms': round(1e3 * float(np.percentile(latencies, 99)), 1) if latencies else None,
          'first_failures': failures[:3]}


# The server as shipped, and the same server with one compiled call per face and no wait: what
# batching across requests changes, measured in the same run.
SERVERS = {'batched': ('--pretrained',),
           'one call per face': ('--pretrained', '--max_batch_faces=1', '--batch_wait_ms=0')}


def run(clients: tuple[int, ...] = CLIENTS, requests: int = 32, max_seconds: float = 45.0,
        baseline_calls: int = 16, servers: dict[str, tuple[str, ...]] | None = None
        ) -> dict[str, Any]:
  """The load report: per workload the in-process baseline, then for each server configuration
  one row per client count, its compiled calls and its memory at start (after its warm-up) and
  at end."""
  import httpx
  from fer_jax.predictor import Predictor
  servers = SERVERS if servers is None else servers
  report: dict[str, Any] = {'requests_per_level': requests, 'max_seconds_per_level': max_seconds,
                            'baseline': {}, 'servers': {}}
  loads = workloads()
  # The baseline runs with no server up, so neither slows the other.
  predictor = Predictor.pretrained()
  report['tta'] = predictor.tta
  for name, (image, query) in loads.items():
    detect = False if query.get('detect') == 'false' else None
    report['baseline'][name] = baseline(predictor, image, detect, baseline_calls)
  del predictor
  for server, args in servers.items():
    with running_server(list(args)) as (url, pid):
      model = httpx.get(f'{url}/v1/model').json()
      result = {'args': list(args), 'version': model['version'], 'tta': model['tta'],
                'batch_sizes': model['batch_sizes'], 'call_ms': model['call_ms'],
                'rss_mb_start': rss_mb(pid), 'rows': {}}
      before = httpx.get(f'{url}/healthz').json()
      for name, (image, query) in loads.items():
        result['rows'][name] = []
        for count in clients:
          row = hammer(url, image, query, count, requests, max_seconds,
                       report['baseline'][name]['emotion'])
          row['vs_baseline'] = round(row['requests_per_second']
                                     / report['baseline'][name]['per_second'], 2)
          result['rows'][name].append(row)
          print(f'{server}: {name}, {count} clients: {row["requests_per_second"]:.2f} req/s, '
                f'p50 {row["p50_ms"]} ms, p99 {row["p99_ms"]} ms, {row["failed"]} failed, '
                f'{row["lost"]} lost', file=sys.stderr, flush=True)
      after = httpx.get(f'{url}/healthz').json()
      result['counts'] = {k: after[k] - before[k] for k in ('requests', 'batches', 'calls',
                                                            'compiles')}
      result['rss_mb_end'] = rss_mb(pid)
    report['servers'][server] = result
  return report


def table(report: dict[str, Any]) -> str:
  """The report as a Markdown table (docs/serve.md)."""
  lines = ['| workload | served by | clients | requests | req/s | x one Predictor call each | '
           'p50 ms | p99 ms | failed | lost |', '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for name, base in report['baseline'].items():
    lines.append(f'| {name} | one Predictor call each, in process | 1 | {base["calls"]} | '
                 f'{base["per_second"]} | 1.00 | {base["p50_ms"]} | - | - | - |')
    for server, result in report['servers'].items():
      for row in result['rows'][name]:
        lines.append(f'| {name} | server, {server} | {row["clients"]} | {row["answered"]} | '
                     f'{row["requests_per_second"]} | {row["vs_baseline"]:.2f} | '
                     f'{row["p50_ms"]} | {row["p99_ms"]} | {row["failed"]} | {row["lost"]} |')
  lines.append('')
  for server, result in report['servers'].items():
    counts = result['counts']
    call_ms = ', '.join(f'{ms} ms for {size}' for size, ms in result['call_ms'].items())
    lines.append(f'- {server} (`{" ".join(result["args"])}`; one call of each batch size at '
                 f'start-up: {call_ms}): '
                 f'RSS {result["rss_mb_start"]:.0f} MiB after start-up, {result["rss_mb_end"]:.0f} '
                 f'MiB at the end; {counts["requests"]} requests in {counts["batches"]} batches '
                 f'and {counts["calls"]} compiled calls; {counts["compiles"]} compilations while '
                 'serving.')
  return '\n'.join(lines)


def main(json_out: str = '') -> dict[str, Any]:
  """What `python -m fer_jax.bench --serve` runs: the report printed as a table, and written as
  JSON to `json_out` when given. Raises FerJaxError when a request failed or was lost."""
  import json
  report = run()
  print(table(report))
  if json_out:
    with open(json_out, 'w') as f:
      json.dump(report, f, indent=2)
  bad = sum(row['failed'] + row['lost'] for result in report['servers'].values()
            for rows in result['rows'].values() for row in rows)
  if bad:
    raise FerJaxError(f'{bad} requests failed or were lost under load (see first_failures in the '
                      'report); the server should answer every one.')
  return report
