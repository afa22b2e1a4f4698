"""A get_config() that forgot its return."""


def get_config():
  pass
