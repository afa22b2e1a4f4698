"""Faces of concurrent requests classified together: one compiled call for many requests.

Requests hand their 48x48 crops to a `Batcher`; one worker thread takes the first waiting
request, waits at most `max_wait_s` for others to fill a batch, and classifies all their faces in
calls of a few fixed batch sizes. The sizes are those whose test-time-augmentation views fill one
of the Predictor's padded buckets exactly (ten crops: 1, 6 and 51 faces for 10, 60 and 510
views), and `warm_up` compiles each at start-up, so nothing is compiled while serving. It also
times each size, and the faces at hand are split into the sizes that cost least in total (on a
CPU, 2 faces go as two calls of 1 rather than one call padded to 6; on an accelerator, padding
up is nearly free). The wait is what dynamic batching in serving systems does (TensorFlow
Serving's `batch_timeout_micros`, Triton's `max_queue_delay_microseconds`).
"""
import concurrent.futures
import queue
import threading
import time
from typing import Any

import numpy as np

from fer_jax.predictor import TTA_VARIANTS, Predictor

# What JAX reports once per function it lowers for new shapes (cache hits on disk included).
LOWERING_EVENT = '/jax/core/compile/jaxpr_to_mlir_module_duration'


def batch_sizes(predictor: Predictor) -> list[int]:
  """The face counts one compiled call takes: each of the Predictor's padded view buckets divided
  by the views a face gets from its TTA variant (1 for none, 2 for flip, 10 for ten crops)."""
  views = len(TTA_VARIANTS[predictor.tta](np.zeros((1, 48, 48, 1), np.uint8)))
  return sorted({bucket // views for bucket in predictor.buckets if bucket >= views})


def cheapest_chunks(costs: dict[int, float]) -> list[list[int]]:
  """For every face count n up to the largest size: the batch sizes whose calls cover n faces at
  the least total cost (`costs`: seconds per call of each size), by dynamic programming."""
  largest = max(costs)
  plans: list[tuple[float, list[int]]] = [(0.0, [])]
  for count in range(1, largest + 1):
    plans.append(min((costs[size] + plans[max(0, count - size)][0],
                      [size] + plans[max(0, count - size)][1]) for size in costs))
  return [sorted(chunks, reverse=True) for _, chunks in plans]


class Batcher:
  """Classifies the faces of concurrent requests in shared fixed-size batches on one thread.

  `submit(faces)` takes uint8 (N, 48, 48) crops and returns a Future of their (N, classes)
  calibrated probabilities (what `Predictor.probabilities` gives for them). `stats` counts
  requests, batches (requests classified together: fewer than requests under concurrency),
  faces, compiled calls and compilations after start-up. Calls take at most `max_faces` faces.
  """

  def __init__(self, predictor: Predictor, max_wait_s: float = 0.005, max_faces: int = 64):
    self.predictor = predictor
    self.sizes = [size for size in batch_sizes(predictor) if size <= max_faces] or [1]
    self.max_wait_s = max_wait_s
    self.stats = {'requests': 0, 'batches': 0, 'faces': 0, 'calls': 0, 'compiles': 0}
    self.costs: dict[int, float] = {}
    self._plans: list[list[int]] = []
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._serve, name='fer_jax-batcher', daemon=True)

  def warm_up(self) -> None:
    """Compiles every batch size before the first request (seconds, once), then times a call
    of each to plan how faces are split into calls."""
    self.costs = {}
    for size in self.sizes:
      faces = np.zeros((size, 48, 48), np.uint8)
      self.predictor.probabilities(faces)
      start = time.perf_counter()
      self.predictor.probabilities(faces)
      self.costs[size] = time.perf_counter() - start
    self._plans = cheapest_chunks(self.costs)

  def start(self) -> 'Batcher':
    """Warms up, then counts in stats['compiles'] every function JAX lowers from here on (any
    process-wide: 0 while only this batcher runs)."""
    self.warm_up()
    import jax
    jax.monitoring.register_event_duration_secs_listener(self._count_compiles)
    self._thread.start()
    return self

  def _count_compiles(self, event: str, duration: float, **kwargs: Any) -> None:
    if event == LOWERING_EVENT:
      self.stats['compiles'] += 1

  def stop(self) -> None:
    import jax
    jax.monitoring.unregister_event_duration_listener(self._count_compiles)
    self._queue.put(None)
    self._thread.join()

  def submit(self, faces: np.ndarray) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    if not len(faces):
      future.set_result(np.zeros((0, len(self.predictor.labels)), np.float32))
    else:
      self._queue.put((np.asarray(faces, np.uint8).reshape(-1, 48, 48), future))
    return future

  def _gather(self, first: tuple) -> tuple[list[tuple], bool]:
    """The first request and those that arrive within max_wait_s, up to the largest batch;
    whether the stop sign came meanwhile."""
    batch, count = [first], len(first[0])
    deadline = time.monotonic() + self.max_wait_s
    while count < self.sizes[-1]:
      try:
        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        break
      if item is None:
        return batch, True
      batch.append(item)
      count += len(item[0])
    return batch, False

  def _serve(self) -> None:
    stop = False
    while not stop:
      first = self._queue.get()
      if first is None:
        break
      batch, stop = self._gather(first)
      try:
        probabilities = self._classify(np.concatenate([faces for faces, _ in batch]))
      except Exception as e:  # handed to every waiting request; the thread keeps serving
        for _, future in batch:
          future.set_exception(e)
        continue
      start = 0
      for faces, future in batch:
        future.set_result(probabilities[start:start + len(faces)])
        start += len(faces)
      self.stats['requests'] += len(batch)
      self.stats['batches'] += 1

  def _classify(self, faces: np.ndarray) -> np.ndarray:
    """Probabilities of any number of faces: calls of the largest size while more remain, then
    the cheapest sizes for the rest, each padded."""
    largest = self.sizes[-1]
    chunks = [largest] * (len(faces) // largest) + self._plans[len(faces) % largest]
    out, start = [], 0
    for size in chunks:
      chunk = faces[start:start + size]
      if not len(chunk):  # not in an optimal plan; kept out all the same
        continue
      padded = np.zeros((size, 48, 48), np.uint8)
      padded[:len(chunk)] = chunk
      out.append(self.predictor.probabilities(padded)[:len(chunk)])
      start += len(chunk)
      self.stats['calls'] += 1
    self.stats['faces'] += len(faces)
    return np.concatenate(out)
