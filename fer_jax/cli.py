"""The start-up every `python -m fer_jax.<command>` shares.

Commands define their flags at import time with nothing heavier than absl, and import JAX inside
`main`, so `--help` answers at once. `run` then gives every command the same manners: `--help`
prints and exits 0, the fast-CPU XLA flag is set before the JAX backend starts, library chatter
stays out of the log, and every failure is one `error:` line on stderr with an exit status:

  0    done
  1    an input, the data or the run failed (FerJaxError: the sentence names it and the fix)
  2    the command line is wrong: an unknown or malformed flag, a missing argument
  130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM; the line says what was saved
"""
import _thread
import contextlib
import errno
import logging as std_logging
import os
import re
import signal
import sys
import threading
from typing import Callable

from absl import app, flags, logging

from fer_jax import FerJaxError, Interrupted, Terminated

EXIT_FAILED, EXIT_USAGE = 1, 2

HELP_ARGS = ('-h', '-?', '--help', '--helpshort', '--helpfull')

# jaxlib's default YNNPACK fusion of convolutions is slow on x86 CPUs; routing only dots to it is
# faster and numerically equivalent. Read when the CPU backend starts; FER_JAX_FAST_CPU=0 opts out.
FAST_CPU_XLA_FLAG = '--xla_cpu_experimental_ynn_fusion_type=dot'

# Warnings that say nothing a user can act on: TFDS naming the builder config it was given, Orbax
# describing read-only checkpoint readers and timing its own asynchronous saves.
_NOISY_WARNINGS = ('Using custom data configuration', 'has no dataset_info.json',
                   'Given directory is read only', 'read_only=True',
                   'Waiting for previous save to complete')


def configure_cpu_backend(enable: bool = True) -> None:
  """Sets the fast-CPU XLA flag; a no-op once the backend has started, hence before any JAX work."""
  if not enable or os.environ.get('FER_JAX_FAST_CPU', '1') == '0':
    return
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if 'ynn_fusion_type' not in xla_flags:
    os.environ['XLA_FLAGS'] = f'{xla_flags} {FAST_CPU_XLA_FLAG}'.strip()


# fer_jax's own source folder. An installed file outside it is a library's: decided by where the
# package is, not by a folder name in the path, because a checkout named fer_jax holds its virtual
# environment, and so every library's files, under a `/fer_jax/` folder too.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def is_noise(record: std_logging.LogRecord) -> bool:
  """Installed libraries' INFO lines (JAX probing for absent accelerators, Orbax's saves, TFDS's
  preparation steps) and the warnings in _NOISY_WARNINGS; fer_jax's own lines and real warnings
  pass."""
  path = os.path.abspath(record.pathname)
  third_party = (any(folder in path for folder in ('site-packages', 'dist-packages'))
                 and not path.startswith(_PACKAGE_DIR))
  if third_party and record.levelno <= std_logging.INFO:
    return True
  return (record.levelno < std_logging.ERROR
          and any(text in record.getMessage() for text in _NOISY_WARNINGS))


def quiet_logs() -> None:
  """Keeps library chatter out of a command's log (absl's handler sees every Python logger)."""
  handler = logging.get_absl_handler()
  if _keep not in handler.filters:
    handler.addFilter(_keep)


def _keep(record: std_logging.LogRecord) -> bool:
  return not is_noise(record)


def _print_help(argv: list[str]) -> None:
  """absl's usage text on stdout; absl's own --help exits 1, which scripts read as a failure."""
  flags.FLAGS.mark_as_parsed()
  app.usage(shorthelp='--helpfull' not in argv, writeto_stdout=True)


def _fail(message: str, status: int) -> None:
  """The error's one line, then silence: threads of libraries still winding down (Orbax after a
  failed write) would otherwise print their tracebacks after it."""
  sys.stdout.flush()
  sys.stderr.write(f'error: {" ".join(message.split())}\n')
  sys.stderr.flush()
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
  sys.exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a wrong command line as one line and exit status 2 (absl prints a
  FATAL line and exits 1)."""
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    config_path = _config_path(argv)
    if 'Error whilst parsing config file' in str(e):
      _fail(_config_load_error(e, config_path), EXIT_USAGE)
    if config_path and 'Flag --config must have a value' in str(e):
      _fail(_not_a_config(config_path, None), EXIT_USAGE)
    group = re.match(r"flag --(config\.[\w.]+)=.*: Failed to parse '.*' as a ConfigDict", str(e))
    if group:
      _fail(f'--{group.group(1)} is a group of fields, not a value; set its fields one by one, '
            f'e.g. --{group.group(1)}.<field>=<value>.', EXIT_USAGE)
    message = re.sub(r'flag --(\w+)=None: Flag --\w+ must have a value other than None\.',
                     r'--\1 is required.', str(e))
    _fail(f'{message.rstrip(".")}; run with --help for the flags.', EXIT_USAGE)
  except Exception as e:  # a config file that does not run (ml_collections executes it here)
    if isinstance(e, (AttributeError, KeyError)) and any(a.startswith('--config.') for a in argv):
      with contextlib.suppress(Exception):  # an override that names no field of a working config
        _fail(unknown_config_field(argv), EXIT_USAGE)
    _fail(_config_load_error(e, _config_path(argv)), EXIT_USAGE)
  _check_config_file()
  return remaining


def _config_load_error(e: Exception, path: str) -> str:
  """One sentence for a config file that raised while it ran, whatever ml_collections wrapped
  around the error."""
  if "has no attribute 'get_config'" in str(e):  # ml_collections imports it as module config_config
    return (f'--config={path} defines no get_config(); define one that returns an '
            'ml_collections.ConfigDict (configs/enhanced.py shows how).')
  if isinstance(e, SyntaxError):
    detail = f'{e.filename}, line {e.lineno}: SyntaxError: {e.msg}'
  else:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else 'no message'
    # ml_collections wraps the file's own exception; its last line already names it.
    detail = last if re.match(r'\w+(Error|Exception): ', last) else f'{type(e).__name__}: {last}'
  return f'the --config file failed to load ({detail}); fix it or pass another config file.'


def _check_config_file() -> None:
  """ml_collections defers a config file's load error until the config is first used, as a
  chain of tracebacks, and takes a get_config() that returns nothing for a missing flag; here
  each is one line."""
  if 'config' not in flags.FLAGS or not flags.FLAGS['config'].present:
    return
  path = flags.FLAGS['config'].serialize().split('=', 1)[-1].split(':')[0]
  try:
    config = flags.FLAGS.config
    config.get('seed')
  except OSError as e:
    reason = ('does not exist' if not os.path.exists(path) else
              f'could not be loaded ({str(e).strip().splitlines()[-1].strip()})')
    _fail(f'--config={path} {reason}; pass a config file such as configs/smoke.py.', EXIT_USAGE)
  except AttributeError:
    pass
  import ml_collections
  if not isinstance(config, ml_collections.ConfigDict):
    _fail(_not_a_config(path, config), EXIT_USAGE)


def _not_a_config(path: str, returned: object) -> str:
  what = 'None' if returned is None else type(returned).__name__
  return (f'--config={path}: its get_config() returned {what}, not an ml_collections.ConfigDict; '
          'return one (configs/enhanced.py shows how).')


def _raise_terminated(signum, frame) -> None:
  raise Terminated()


def _redelivering_interrupts(previous: Callable) -> Callable:
  """A sys.unraisablehook that raises again, in the main thread, an interrupt that landed where
  Python cannot raise (a garbage-collection callback of JAX's, a finalizer): Python would print it
  and drop it, and the command would run on and exit 0. The signal is sent again from a thread, a
  moment later, as the main thread's handler would run inside this hook and be dropped again."""
  def hook(unraisable) -> None:
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
      signum = signal.SIGTERM if issubclass(unraisable.exc_type, Terminated) else signal.SIGINT
      threading.Timer(0.01, _thread.interrupt_main, (signum,)).start()
      return
    previous(unraisable)
  return hook


def prepare_output(path: str, flag: str) -> str:
  """Makes an output file's folder and proves it writable, before a command does any work, so no
  result is lost to a bad path at the end. Returns `path`."""
  if os.path.isdir(path):
    raise FerJaxError(f'{flag}={path} is a folder; name a file.')
  prepare_folder(os.path.dirname(os.path.abspath(path)), flag, shown=path)
  return path


def prepare_folder(folder: str, flag: str, shown: str | None = None) -> str:
  """Makes an output folder (a workdir) and proves it writable before any work. Returns it."""
  probe = os.path.join(folder, f'.fer_jax_write_test_{os.getpid()}')
  try:
    os.makedirs(folder, exist_ok=True)
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    reason = ('part of that path is a file, not a folder' if e.errno in (errno.EEXIST, errno.ENOTDIR)
              else e.strerror)
    raise FerJaxError(f'{flag}={shown or folder}: cannot write in {folder} ({reason}); pass a '
                      'path in a folder you can write to.') from None
  return folder


def run(main: Callable[[list[str]], None],
        fast_cpu: Callable[[], bool] | None = lambda: True, uses_jax: bool = True) -> None:
  """Runs `main(argv)` as a command with the exit statuses of the module docstring. `fast_cpu` is
  asked after flag parsing (a config may turn the XLA flag off) and before `main` can start JAX;
  None leaves the flag to `main`. With `uses_jax`, compiled programs are cached across runs and
  long compilations logged (fer_jax.compilation)."""
  if any(arg in HELP_ARGS for arg in sys.argv[1:]):
    _print_help(sys.argv)
    sys.exit(0)

  def start(argv: list[str]) -> None:
    quiet_logs()
    signal.signal(signal.SIGTERM, _raise_terminated)
    sys.unraisablehook = _redelivering_interrupts(sys.unraisablehook)
    try:
      if fast_cpu is not None:
        try:
          configure_cpu_backend(fast_cpu())
        except (AttributeError, KeyError) as e:  # a config file that lacks the fields
          _fail(f'the --config file has no field {str(e).strip(chr(34) + chr(39))!r}; start from '
                'configs/enhanced.py, which defines every field.', EXIT_USAGE)
      if uses_jax:
        from fer_jax import compilation
        compilation.configure()
      main(argv)
    except Interrupted as e:
      _fail(str(e), e.exit_status)
    except FerJaxError as e:
      _fail(str(e), EXIT_FAILED)
    except app.UsageError as e:
      _fail(f'{str(e).rstrip(".")}; run with --help for the flags.', EXIT_USAGE)
    except KeyboardInterrupt as e:
      stopped = Interrupted('nothing more was written.', e)
      _fail(str(stopped), stopped.exit_status)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      sys.exit(EXIT_FAILED)
  app.run(start, flags_parser=_parse_flags)


def _config_fields(config, prefix: str = '') -> list[str]:
  fields = []
  for name, value in config.items():
    fields.append(prefix + name)
    if hasattr(value, 'items'):
      fields += _config_fields(value, f'{prefix}{name}.')
  return fields


def _config_path(argv: list[str]) -> str:
  """The --config file named on the command line, '' when none."""
  return next((argv[i + 1] if arg == '--config' and i + 1 < len(argv) else arg.split('=', 1)[1]
               for i, arg in enumerate(argv) if arg == '--config' or arg.startswith('--config=')),
              '')


def unknown_config_field(argv: list[str]) -> str:
  """The sentence for `--config.<field>=...` overrides that name no field of the config file."""
  import difflib
  import importlib.util
  path = _config_path(argv)
  spec = importlib.util.spec_from_file_location('_config', path.split(':')[0])
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  fields = _config_fields(module.get_config())
  for arg in argv:
    if arg.startswith('--config.'):
      field = arg[len('--config.'):].split('=')[0]
      if field not in fields:
        close = difflib.get_close_matches(field, fields, n=3, cutoff=0.6)
        group = field.rpartition('.')[0]
        names = [f.rpartition('.')[2] for f in fields if f.rpartition('.')[0] == group]
        hint = f'did you mean {" or ".join("config." + c for c in close)}?' if close else (
            f'the fields of config{"." + group if group else ""} are {", ".join(names)}.')
        return f'{arg}: {path} has no field {field!r}; {hint}'
  return f'a --config.<field> override names no field of {path}; check the spelling.'

