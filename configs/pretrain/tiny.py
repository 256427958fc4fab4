"""Pretrain the tiny Yi model on the embedded corpus (prepared on first use into a cache).

  yijax train --config=configs/pretrain/tiny.py --workdir=runs/tiny
  yijax train --config=configs/pretrain/tiny.py --workdir=runs/tiny --config.optimizer.lr=1e-3 \
      --config.train.steps=600
"""

from yijax.train.config import tiny_pretrain_config


def get_config(arg=None):
  del arg
  return tiny_pretrain_config()
