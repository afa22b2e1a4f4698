"""fer_jax: facial-expression recognition on 48x48 grey faces in JAX/Flax."""

EMOTIONS: tuple[str, ...] = ('angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral')
LABEL_MAP: dict[int, str] = dict(enumerate(EMOTIONS))


def plural(count: int, noun: str) -> str:
  """'1 epoch', '2 epochs', '3 classes': a count and its noun, for messages."""
  if count == 1:
    return f'{count} {noun}'
  return f'{count} {noun}{"es" if noun.endswith(("s", "x", "sh")) else "s"}'


class FerJaxError(ValueError):
  """An error in the user's input or config; its message says what to change."""


class Terminated(KeyboardInterrupt):
  """SIGTERM delivered as an interrupt (fer_jax.cli installs the handler), so that the same
  clean-up runs as for Ctrl-C."""


class Interrupted(FerJaxError):
  """A command stopped by SIGINT (Ctrl-C) or SIGTERM; its message says what was saved and how to
  go on. `exit_status` is 130 or 143 (128 + the signal's number, as shells report)."""

  def __init__(self, message: str, stop: KeyboardInterrupt):
    self.signal_name = 'SIGTERM' if isinstance(stop, Terminated) else 'SIGINT (Ctrl-C)'
    super().__init__(f'interrupted by {self.signal_name}: {message}')
    self.exit_status = 143 if isinstance(stop, Terminated) else 130
