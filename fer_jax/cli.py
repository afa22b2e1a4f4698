"""The start-up every `python -m fer_jax.<command>` shares.

Commands define their flags at import time with nothing heavier than absl, and import JAX inside
`main`, so `--help` answers at once. `run` then gives every command the same manners: `--help`
prints and exits 0, the fast-CPU XLA flag is set before the JAX backend starts, library chatter
stays out of the log, and a `FerJaxError` ends the command with its one sentence and exit status 1.
"""
import logging as std_logging
import os
import sys
from typing import Callable

from absl import app, flags, logging

from fer_jax import FerJaxError

HELP_ARGS = ('-h', '-?', '--help', '--helpshort', '--helpfull')

# jaxlib's default YNNPACK fusion of convolutions is slow on x86 CPUs; routing only dots to it is
# faster and numerically equivalent. Read when the CPU backend starts; FER_JAX_FAST_CPU=0 opts out.
FAST_CPU_XLA_FLAG = '--xla_cpu_experimental_ynn_fusion_type=dot'

# Warnings that say nothing a user can act on: TFDS naming the builder config it was given, Orbax
# describing read-only checkpoint readers.
_NOISY_WARNINGS = ('Using custom data configuration', 'has no dataset_info.json',
                   'Given directory is read only', 'read_only=True')


def configure_cpu_backend(enable: bool = True) -> None:
  """Sets the fast-CPU XLA flag; a no-op once the backend has started, hence before any JAX work."""
  if not enable or os.environ.get('FER_JAX_FAST_CPU', '1') == '0':
    return
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if 'ynn_fusion_type' not in xla_flags:
    os.environ['XLA_FLAGS'] = f'{xla_flags} {FAST_CPU_XLA_FLAG}'.strip()


def is_noise(record: std_logging.LogRecord) -> bool:
  """Installed libraries' INFO lines (JAX probing for absent accelerators, Orbax's saves, TFDS's
  preparation steps) and the warnings in _NOISY_WARNINGS; fer_jax's own lines and real warnings
  pass."""
  third_party = 'site-packages' in record.pathname and f'{os.sep}fer_jax{os.sep}' not in record.pathname
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


def run(main: Callable[[list[str]], None],
        fast_cpu: Callable[[], bool] | None = lambda: True) -> None:
  """Runs `main(argv)` as a command. `fast_cpu` is asked after flag parsing (a config may turn
  the XLA flag off) and before `main` can start JAX; None leaves the flag to `main`."""
  if any(arg in HELP_ARGS for arg in sys.argv[1:]):
    _print_help(sys.argv)
    sys.exit(0)

  def start(argv: list[str]) -> None:
    quiet_logs()
    try:
      if fast_cpu is not None:
        configure_cpu_backend(fast_cpu())
      main(argv)
    except FerJaxError as e:
      sys.exit(f'error: {e}')  # one line on stderr, exit status 1
  try:
    app.run(start)
  except (AttributeError, KeyError):  # ml_collections: a --config.<field> override names no field
    if flags.FLAGS.is_parsed():
      raise
    sys.exit(f'error: {unknown_config_field(sys.argv)}')


def _config_fields(config, prefix: str = '') -> list[str]:
  fields = []
  for name, value in config.items():
    fields.append(prefix + name)
    if hasattr(value, 'items'):
      fields += _config_fields(value, f'{prefix}{name}.')
  return fields


def unknown_config_field(argv: list[str]) -> str:
  """The sentence for `--config.<field>=...` overrides that name no field of the config file."""
  import difflib
  import importlib.util
  path = next((argv[i + 1] if arg == '--config' else arg.split('=', 1)[1]
               for i, arg in enumerate(argv) if arg == '--config' or arg.startswith('--config=')), '')
  spec = importlib.util.spec_from_file_location('_config', path.split(':')[0])
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  fields = _config_fields(module.get_config())
  for arg in argv:
    if arg.startswith('--config.'):
      field = arg[len('--config.'):].split('=')[0]
      if field not in fields:
        close = difflib.get_close_matches(field, fields, n=3, cutoff=0.6)
        hint = f'did you mean {" or ".join("config." + c for c in close)}?' if close else (
            f'its fields are listed in {path}.')
        return f'{arg}: {path} has no field {field!r}; {hint}'
  return f'a --config.<field> override names no field of {path}; check the spelling.'

