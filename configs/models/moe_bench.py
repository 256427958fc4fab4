"""The MoE benchmark model: hidden 1024, 16 layers, first dense, 64 experts (FFN 704) top-6 + 2 shared; ~2.3B total, ~0.4B active.

  yijax model-info --config=configs/models/moe_bench.py
"""

from yijax.models import presets


def get_config(arg=None):
  del arg
  return presets.config_dict("moe_bench")
