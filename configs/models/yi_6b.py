"""Yi-6B: hidden 4096, 32 layers, 32 heads, 4 KV heads, FFN 11008, vocab 64000, rope_theta 5e6.

  yijax model-info --config=configs/models/yi_6b.py
"""

from yijax.models import presets


def get_config(arg=None):
  del arg
  return presets.config_dict("yi_6b")
