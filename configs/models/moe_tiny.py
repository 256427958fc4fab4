"""Tiny Yi-Lightning-style MoE for tests and experiments: 1 dense layer, 16 routed experts (top-2) + 1 shared.

  yijax model-info --config=configs/models/moe_tiny.py
"""

from yijax.models import presets


def get_config(arg=None):
  del arg
  return presets.config_dict("moe_tiny")
