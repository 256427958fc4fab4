"""Tiny Yi-Lightning: 2 dense layers, then 2 MoE layers (16 experts top-2 + 1 shared), hybrid attention
(layers 0-1 sliding window 128, layers 2-3 full; each pair shares one layer's K/V).

  yijax model-info --config=configs/models/yi_lightning_tiny.py
  yijax train --config=configs/pretrain/yi_lightning_tiny.py --workdir=runs/lightning
"""

from yijax.models import presets


def get_config(arg=None):
  del arg
  return presets.config_dict("yi_lightning_tiny")
