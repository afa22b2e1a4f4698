"""A get_config() that raises."""


def get_config():
  raise ValueError("config.head_lr must be set")
