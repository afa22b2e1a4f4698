"""XLA compilation that shows and is paid once: every command's start-up (fer_jax.cli) calls
`configure`.

JAX compiles each jitted function the first time it runs, which takes seconds to minutes on a CPU
(the train step: minutes on a 2-core CPU). JAX's persistent compilation cache keeps the compiled
programs on disk, so a second `predict` or a resumed training run reads them back instead. It is on
by default, in the user's cache folder (platformdirs: ~/.cache/fer_jax/xla on Linux,
~/Library/Caches/fer_jax/xla on macOS, or $XDG_CACHE_HOME/fer_jax/xla):

  FER_JAX_COMPILATION_CACHE=0          switches it off
  JAX_COMPILATION_CACHE_DIR=/a/folder  keeps it there instead (JAX's own variable)

Every program is kept, small ones too (predict's eight compile in 1.2 s and load in 0.1 s on a
2-core CPU). Nothing is evicted: delete the folder at any time to reclaim the space. The folder is trusted like code: JAX loads what it finds there, so keep it private
(docs.jax.dev, "Persistent compilation cache"). A compilation that runs longer than LOG_AFTER_SECONDS
gets a log line while it runs and one with its time when it ends.
"""
import functools
import os
import threading

from absl import logging

MIN_COMPILE_SECONDS = 0.0
LOG_AFTER_SECONDS = 2.0
# JAX's monitoring event around each backend (XLA) compilation: a scalar with the start time when
# it begins, a duration when it ends (jax._src.dispatch.BACKEND_COMPILE_EVENT).
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


def cache_dir() -> str | None:
  """Where compiled programs are kept: $JAX_COMPILATION_CACHE_DIR, else the user's cache folder;
  None when FER_JAX_COMPILATION_CACHE=0."""
  if os.environ.get('FER_JAX_COMPILATION_CACHE', '1') == '0':
    return None
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  import platformdirs
  return os.path.join(platformdirs.user_cache_dir('fer_jax'), 'xla')


def configure() -> str | None:
  """Turns the persistent cache on (or off, see the module docstring) and the compile log on.
  Call before the first compilation. Returns the cache folder, None when off."""
  import jax
  folder = cache_dir()
  jax.config.update('jax_compilation_cache_dir', folder)
  if folder and 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:  # JAX's own wins
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
  _watch_compiles()
  return folder


class CompileLog:
  """Listens to JAX's compile events; logs those that take longer than `after_s`: 'compiling X'
  once they have run that long (from a timer thread), 'compiled X in N s' when they end."""

  def __init__(self, after_s: float = LOG_AFTER_SECONDS):
    self.after_s = after_s
    self._running: dict[int, tuple[threading.Timer, str]] = {}  # compiling thread -> its timer

  def started(self, event: str, value: float, **kwargs) -> None:
    if event != BACKEND_COMPILE_EVENT:
      return
    name = _shown_name(kwargs.get('fun_name', ''))
    folder = cache_dir()
    where = (f'kept in {folder} for later runs' if folder else
             'not kept: FER_JAX_COMPILATION_CACHE=0')
    timer = threading.Timer(self.after_s, _announce, (name, where))
    timer.daemon = True
    self._running[threading.get_ident()] = (timer, name)
    timer.start()

  def finished(self, event: str, duration_secs: float, **kwargs) -> None:
    if event != BACKEND_COMPILE_EVENT:
      return
    timer, name = self._running.pop(threading.get_ident(), (None, ''))
    if timer is None:
      return
    timer.cancel()
    if duration_secs >= self.after_s:
      logging.info('compiled %s in %.1f s', name, duration_secs)


def _announce(name: str, where: str) -> None:
  logging.info('compiling %s with XLA (once; %s)...', name, where)


def _shown_name(fun_name: str) -> str:
  """'jit(train_steps)' -> 'train_steps', the jitted Python function's name; 'a jitted function'
  for a lambda."""
  name = fun_name.removeprefix('jit(').removesuffix(')')
  return 'a jitted function' if not name or name.startswith('<') else name


@functools.cache
def _watch_compiles() -> CompileLog:
  """One CompileLog per process, however often `configure` runs."""
  import jax.monitoring
  log = CompileLog()
  jax.monitoring.register_scalar_listener(log.started)
  jax.monitoring.register_event_duration_secs_listener(log.finished)
  return log
