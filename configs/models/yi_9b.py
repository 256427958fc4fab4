"""Yi-9B: Yi-6B depth up-scaled to 48 layers.

  yijax model-info --config=configs/models/yi_9b.py
"""

from yijax.models import presets


def get_config(arg=None):
  del arg
  return presets.config_dict("yi_9b")
