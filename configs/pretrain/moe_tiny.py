"""Pretrain the tiny MoE (1 dense layer, 16 experts top-2 + 1 shared) on the embedded corpus.

  yijax train --config=configs/pretrain/moe_tiny.py --workdir=runs/moe_tiny
  # aux-loss-free balancing instead of the balance loss:
  yijax train --config=configs/pretrain/moe_tiny.py --workdir=runs/moe_free \
      --config.model.router_type=sigmoid --config.model.aux_loss_coef=0 \
      --config.model.router_bias_update_rate=0.001
"""

from yijax.models import presets
from yijax.train.config import tiny_pretrain_config


def get_config(arg=None):
  del arg
  config = tiny_pretrain_config()
  config.model = presets.config_dict("moe_tiny")
  return config
