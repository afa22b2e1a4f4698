"""One training run over several processes (hosts) with JAX's multi-controller runtime.

Every process runs the same program: `jax.distributed.initialize` joins them, the mesh spans all
their devices (fer_jax.parallel), and each process feeds, computes and saves its part. Process 0
hosts the coordination service and is the only one that logs, writes metrics, TensorBoard and plots;
all of them take part in Orbax's checkpoint saves. When a process fails it tells the others, and
when one dies without a word the others miss its beats (PeerWatch); either way they stop with one
sentence instead of hanging in a collective, and the same command resumes the run.
"""
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator

from absl import logging
import numpy as np

from fer_jax import FerJaxError, Interrupted, plural


def stop_now(message: str) -> None:
  """Ends this process with `error: message` on stderr and exit status 1, skipping the runtime's
  shutdown barrier (its peers are gone or about to go; waiting for them would only hang)."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  os._exit(1)


class PeerWatch:
  """Each process's sign of life, and its last word, in the runtime's key-value store.

  The runtime's own heartbeat also finds a dead process, but then aborts the others from C++ with
  a stack trace; this watch, with a shorter timeout, lets them stop with one sentence that says
  which process went and how to resume. A process that fails publishes its error, so the others
  stop at once and say why rather than time out.
  """
  PREFIX = 'fer_jax/watch'

  def __init__(self, client: Any, timeout: float, resume_hint: Callable[[], str],
               interval: float = 1.0):
    import jax
    self.client, self.timeout, self.resume_hint, self.interval = client, timeout, resume_hint, interval
    self.process, self.processes = jax.process_index(), jax.process_count()
    self.finished = threading.Event()
    self.thread = threading.Thread(target=self._watch, name='fer_jax-peer-watch', daemon=True)
    self.thread.start()

  def _key(self, kind: str, process: int) -> str:
    return f'{self.PREFIX}/{kind}/{process}'

  def _watch(self) -> None:
    beat, last_seen = 0, {}
    while not self.finished.is_set():
      beat += 1
      try:
        self.client.key_value_set(self._key('beat', self.process), str(beat), allow_overwrite=True)
        entries = dict(self.client.key_value_dir_get(self.PREFIX))
      except Exception:  # the coordinator (process 0) is gone, or unreachable
        stop_now(f'process {self.process} lost contact with process 0, which coordinates the '
                 f'run (it was stopped, or its host is down); {self.resume_hint()}')
      now = time.monotonic()
      for peer in range(self.processes):
        if peer == self.process or self._key('done', peer) in entries:
          continue
        if self._key('error', peer) in entries:
          stop_now(self.peer_error(wait=0) or f'process {peer} stopped; {self.resume_hint()}')
        value = entries.get(self._key('beat', peer))
        if peer not in last_seen or last_seen[peer][0] != value:
          last_seen[peer] = (value, now)
        elif now - last_seen[peer][1] > self.timeout:
          stop_now(f'process {peer} has given no sign of life for {self.timeout:.0f} s (killed, '
                   f'or its host is down); process {self.process} stops too; {self.resume_hint()}')
      self.finished.wait(self.interval)

  def peer_error(self, wait: float = 3.0) -> str | None:
    """The sentence of a peer that published its error, waiting up to `wait` s for one (a failed
    collective is often the first sign of a peer that is still saying why it stops)."""
    deadline = time.monotonic() + wait
    while True:
      try:
        entries = dict(self.client.key_value_dir_get(f'{self.PREFIX}/error'))
      except Exception:
        return None
      for key, message in sorted(entries.items()):
        peer = key.rsplit('/', 1)[-1]
        if peer != str(self.process):
          return (f'process {peer} stopped, so process {self.process} stops too; its error: '
                  f'{message}')
      if time.monotonic() > deadline:
        return None
      time.sleep(0.2)

  def done(self) -> None:
    """This process ended its run normally: the others no longer wait for its beats."""
    self.finished.set()
    with contextlib.suppress(Exception):  # the run is over; a coordinator already gone is fine
      self.client.key_value_set(self._key('done', self.process), 'ok', allow_overwrite=True)

  def failed(self, message: str) -> None:
    """Tells the others why this process stops, then gives them a moment to read it (process 0
    holds the store they read it from)."""
    self.finished.set()
    try:
      self.client.key_value_set(self._key('error', self.process), message, allow_overwrite=True)
    except Exception:
      return
    if self.process == 0:
      time.sleep(3 * self.interval)


def _wait_for_coordinator(address: str, process_id: int, timeout: float) -> None:
  """Waits until process 0's coordinator accepts connections. Checked here because the runtime,
  when its own wait times out, aborts the process from C++ instead of raising."""
  host, port = address.rsplit(':', 1)
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host.strip('[]'), int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        raise FerJaxError(
            f'process {process_id} could not reach the coordinator at {address} within '
            f'{timeout:.0f} s ({e.strerror or e}); '
            'start process 0 (it hosts the coordinator), check that this address and port reach '
            'it from here, or wait longer with --initialization_timeout.') from None
      time.sleep(0.5)


def _check_port_free(address: str) -> None:
  """Process 0's coordinator port must be free: jaxlib crashes when it cannot bind it."""
  port = address.rsplit(':', 1)[1]
  with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
    try:
      probe.bind(('', int(port)))
    except OSError as e:
      raise FerJaxError(f'process 0 cannot host the coordinator on port {port} ({e.strerror}); '
                        'another program (perhaps another run) uses it: pick a free port for '
                        '--coordinator_address on every process.') from None


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, auto: bool, initialization_timeout: int,
               heartbeat_timeout: int, resume_hint: Callable[[], str]) -> PeerWatch | None:
  """Joins the run's processes and starts watching them; None (nothing done) for a one-process
  run without any of the flags.

  `auto` lets JAX find the cluster itself (Cloud TPU pod slices, SLURM, Open MPI); otherwise the
  three explicit values are needed. Must run before anything touches a JAX backend."""
  explicit = (coordinator_address, num_processes, process_id)
  if not auto and all(value is None for value in explicit):
    return None
  if not auto and None in explicit:
    raise FerJaxError('a multi-process run needs all of --coordinator_address, --num_processes and '
                      '--process_id (or --distributed alone on a TPU pod slice or under SLURM).')
  if num_processes is not None and num_processes < 1:
    raise FerJaxError(f'--num_processes={num_processes} must be at least 1.')
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise FerJaxError(f'--process_id={process_id} is outside 0..{num_processes - 1} for '
                      f'--num_processes={num_processes}; number the processes 0 to '
                      f'{num_processes - 1}, one each.')
  if coordinator_address is not None and not coordinator_address.rsplit(':', 1)[-1].isdigit():
    raise FerJaxError(f'--coordinator_address={coordinator_address} has no port; use HOST:PORT, '
                      'the address of process 0 and a free port, e.g. 10.0.0.1:1234.')
  if heartbeat_timeout < 2:
    raise FerJaxError(f'--heartbeat_timeout={heartbeat_timeout} is shorter than two beats (one a '
                      'second); use 10 s or more.')
  if coordinator_address is not None and process_id:
    _wait_for_coordinator(coordinator_address, process_id, initialization_timeout)
  elif coordinator_address is not None and process_id == 0:
    _check_port_free(coordinator_address)
  import jax
  from jax._src import distributed as jax_distributed  # the runtime client, as Orbax uses it
  try:
    # The runtime's heartbeat is the backstop, twice as patient as PeerWatch.
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=initialization_timeout,
                               heartbeat_timeout_seconds=2 * heartbeat_timeout + 10)
  except Exception as e:  # jaxlib raises its runtime errors with pages of RPC detail
    with contextlib.suppress(Exception):  # else JAX's exit hook reports the failed join again
      jax.distributed.shutdown()
    if auto and jax_distributed.global_state.client is None and None in explicit:
      raise FerJaxError(
          '--distributed found no cluster to join (JAX recognises Cloud TPU pod slices, SLURM, Open '
          'MPI and a few more from their environment variables); run inside one, or give '
          '--coordinator_address, --num_processes and --process_id.') from None
    detail = _shorten(' '.join(str(e).split())) or type(e).__name__
    where = coordinator_address or 'the address the cluster environment gives'
    raise FerJaxError(
        f'process {process_id if process_id is not None else "?"} could not join the run at {where} '
        f'within {initialization_timeout} s ({detail}); start every process (process 0 hosts the '
        'coordinator), check that the address and port are reachable from here and that each '
        'process has its own --process_id; --initialization_timeout waits longer.') from None
  return PeerWatch(jax_distributed.global_state.client, heartbeat_timeout, resume_hint)


def _shorten(text: str, limit: int = 200) -> str:
  return text if len(text) <= limit else text[:limit].rsplit(' ', 1)[0] + ' ...'


@contextlib.contextmanager
def stop_together(watch: PeerWatch) -> Iterator[None]:
  """An error in one process of a run ends it at once with its one line and tells the others,
  instead of leaving them to wait in the next collective; SIGTERM (schedulers, preemption) too."""
  import jax
  previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
  try:
    yield
    watch.done()
    return
  except (KeyboardInterrupt, Interrupted):  # Interrupted: training's own sentence for one process
    message = f'process {jax.process_index()} was interrupted; {watch.resume_hint()}'
  except FerJaxError as e:
    message = str(e)
  except Exception as e:
    message = _collective_failure(e, watch) or _unexpected_failure(e, watch)
  finally:
    signal.signal(signal.SIGTERM, previous)
  watch.failed(message)
  stop_now(message)


def _collective_failure(error: Exception, watch: PeerWatch) -> str | None:
  """The sentence for a collective whose peer has gone (the CPU collectives raise it as a
  ValueError naming Gloo), None for any other error."""
  import jax
  if not (isinstance(error, jax.errors.JaxRuntimeError) or
          (isinstance(error, ValueError) and 'Gloo' in str(error))):
    return None
  detail = ' '.join(str(error).split()).replace('INTERNAL: Error dispatching computation: ', '')
  return watch.peer_error() or (
      f'process {jax.process_index()} lost contact with the rest of the run, a collective '
      f'failed ({_shorten(detail)}): another process stopped or cannot be reached, and its log '
      f'says why; {watch.resume_hint()}')


def _unexpected_failure(e: Exception, watch: PeerWatch) -> str:
  """A bug's sentence; its traceback goes to this process's log."""
  import jax
  logging.exception('process %d failed', jax.process_index())
  return (f'process {jax.process_index()} failed with {type(e).__name__}: '
          f'{_shorten(" ".join(str(e).split()))} (the traceback is in process '
          f'{jax.process_index()}\'s log); {watch.resume_hint()}')


def is_primary() -> bool:
  """The process that logs and writes the run's files (process 0); True in a one-process run."""
  import jax
  return jax.process_index() == 0


def announce() -> None:
  """Process 0 logs the run; each other process says one line and then only warnings and errors."""
  import jax
  if jax.process_count() == 1:
    return
  local = ', '.join(str(d) for d in jax.local_devices())
  if is_primary():
    logging.info('process 0 of %d: %s in all, %d here (%s); this process logs the run',
                 jax.process_count(), plural(jax.device_count(), 'device'),
                 jax.local_device_count(), local)
    return
  logging.info('process %d of %d: %s here (%s); process 0 logs the run, writes its metrics '
               'and leads its checkpoints', jax.process_index(), jax.process_count(),
               plural(jax.local_device_count(), 'device'), local)
  logging.set_verbosity(logging.WARNING)


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process reaches `name`, through the coordination service rather than a
  device collective. Gloo's collectives give up after 30 s, so processes whose host work differs
  (process 0 compiles the augmentation preview, draws TensorBoard figures, writes the metrics)
  meet here before the next collective; a peer that dies meanwhile is PeerWatch's to report."""
  import jax
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed
  jax_distributed.global_state.client.wait_at_barrier(f'fer_jax/{name}', timeout_s * 1000)


def _gather_text(text: str) -> list[str]:
  """Each process's `text`, in process order (a collective: every process must call it)."""
  from jax.experimental import multihost_utils
  encoded = np.frombuffer(text.encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.int32(len(encoded)))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:len(encoded)] = encoded
  gathered = multihost_utils.process_allgather(padded)
  return [bytes(row[:length]).decode() for row, length in zip(gathered, lengths)]


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  return {k: v for key, value in tree.items() for k, v in _flat(value, f'{prefix}{key}.').items()}


def check_same_config(config_json: str) -> None:
  """Refuses a run whose processes were started with different configs (their steps would silently
  disagree, or deadlock in a collective)."""
  import jax
  if jax.process_count() == 1:
    return
  configs = _gather_text(config_json)
  reference = _flat(json.loads(configs[0]))
  for process, text in enumerate(configs[1:], start=1):
    if text != configs[0]:
      other = _flat(json.loads(text))
      fields = sorted(f for f in set(reference) | set(other) if reference.get(f) != other.get(f))
      shown = ', '.join(f'config.{f} ({reference.get(f)!r} vs {other.get(f)!r})' for f in fields[:3])
      raise FerJaxError(f'process {process} was started with a different config from process 0: '
                        f'{shown or "the same fields, in another order"}; start every process with '
                        'the same --config file and --config.* overrides.')


def check_same_data(fingerprints: dict[str, dict[str, Any]]) -> None:
  """Refuses a run whose processes loaded different faces for a split ({name: Split.fingerprint()}):
  each process gathers its batches from its own copy, so they must agree face for face."""
  import jax
  if jax.process_count() == 1:
    return
  gathered = [json.loads(text) for text in _gather_text(json.dumps(fingerprints))]
  for process, theirs in enumerate(gathered[1:], start=1):
    for name, print_ in theirs.items():
      if print_ != gathered[0][name]:
        raise FerJaxError(f'process {process} loaded a different {name} split from process 0 '
                          f'({print_["faces"]} faces vs {gathered[0][name]["faces"]}, or the same '
                          'count with other faces); give every process the same dataset file '
                          '(FER2013_PATH or config.data.*).')
