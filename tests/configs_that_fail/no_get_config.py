"""A config file without get_config()."""
field = 1
