"""Tiny MoE vs tiny dense at equal active parameters, and three ways to balance the experts.

  yijax experiment --config=experiments/moe/config.py:cpu --workdir=runs/moe
  yijax experiment --config=experiments/moe/config.py:smoke --workdir=/tmp/moe_smoke
  yijax experiment --config=experiments/moe/config.py:cpu --workdir=runs/moe --config.study.seeds=5

Arms (every seed paired: seed i of every arm sees the same data order; yijax/studies/moe.py):
  dense         the tiny dense model with mlp_dim 468: 4.19M parameters, as many
                as the MoE's active parameters
  moe_aux       moe_tiny (16 experts top-2 + 1 shared; 8.32M total / 4.19M active),
                softmax router, load-balancing loss 0.01
  moe_no_aux    the same without any balancing
  moe_aux_free  sigmoid router + selection bias moved 0.001 per step toward equal
                load (DeepSeek-V3), no balancing loss
Knobs (config.study): seeds, steps, batch_size, seq_len, lr, eval_batches.
Scales: smoke (a few steps, CI), cpu (3 seeds x 300 steps of 8 x 256 tokens: the README
table), gpu (moe_bench-sized arms for one H100), paper (= gpu; --dry_run).
"""

from yijax.studies import moe


def get_config(scale="smoke"):
  return moe.get_config(scale)
