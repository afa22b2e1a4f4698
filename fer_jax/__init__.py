"""fer_jax: facial-expression recognition on 48x48 grey faces in JAX/Flax."""

EMOTIONS: tuple[str, ...] = ('angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral')
LABEL_MAP: dict[int, str] = dict(enumerate(EMOTIONS))


class FerJaxError(ValueError):
  """An error in the user's input or config; its message says what to change."""
