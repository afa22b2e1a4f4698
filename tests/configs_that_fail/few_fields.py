"""A ConfigDict with too few fields."""
import ml_collections


def get_config():
  return ml_collections.ConfigDict({"seed": 0})
