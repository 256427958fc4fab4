"""Tiny Yi-architecture model (a few million parameters) for tests and the quickstart.

  yijax model-info --config=configs/models/tiny.py
"""

from yijax.models import presets


def get_config(arg=None):
  del arg
  return presets.config_dict("tiny")
