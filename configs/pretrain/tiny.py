"""Pretrain the tiny Yi model on the embedded corpus (prepared on first use into a cache).

  yijax train --config=configs/pretrain/tiny.py --workdir=runs/tiny
  yijax train --config=configs/pretrain/tiny.py --workdir=runs/tiny --config.optimizer.lr=1e-3 \
      --config.train.steps=300
"""

from yijax.train.config import base_config


def get_config(arg=None):
  del arg
  config = base_config("tiny")
  config.train.steps = 200
  config.train.batch_size = 8
  config.train.seq_len = 256
  config.optimizer.lr = 3e-3
  config.optimizer.warmup_steps = 20
  config.checkpoint.every_steps = 50
  config.eval.every_steps = 100
  config.eval.batches = 4
  config.data.sources = {"python_code": 0.7, "python_docs": 0.3}
  return config
