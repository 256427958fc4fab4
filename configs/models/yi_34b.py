"""Yi-34B: hidden 7168, 60 layers, 56 heads, 8 KV heads, FFN 20480, vocab 64000.

  yijax model-info --config=configs/models/yi_34b.py
"""

from yijax.models import presets


def get_config(arg=None):
  del arg
  return presets.config_dict("yi_34b")
