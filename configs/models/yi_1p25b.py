"""The 1.25B benchmark model: hidden 2048, 22 layers, 16 heads, 4 KV heads, FFN 5632, vocab 64000.

  yijax model-info --config=configs/models/yi_1p25b.py
"""

from yijax.models import presets


def get_config(arg=None):
  del arg
  return presets.config_dict("yi_1p25b")
