"""Pretrain tiny Yi-Lightning (MoE + sliding/full attention + cross-layer KV sharing) on the embedded corpus.

  yijax train --config=configs/pretrain/yi_lightning_tiny.py --workdir=runs/lightning
"""

from yijax.models import presets
from yijax.train.config import tiny_pretrain_config


def get_config(arg=None):
  del arg
  config = tiny_pretrain_config()
  config.model = presets.config_dict("yi_lightning_tiny")
  return config
