"""Tiny MoE vs tiny dense at equal active parameters, and three ways to balance the experts.

  yijax experiment --config=experiments/moe/config.py:cpu --workdir=runs/moe
  yijax experiment --config=experiments/moe/config.py:smoke --workdir=/tmp/moe_smoke

Arms (same data order, same tokens, same optimizer):
  dense         the tiny dense model with mlp_dim 468: 4.19M parameters, as many
                as the MoE's active parameters
  moe_aux       moe_tiny (16 experts top-2 + 1 shared; 8.32M total / 4.19M active),
                softmax router, load-balancing loss 0.01
  moe_no_aux    the same without any balancing
  moe_aux_free  sigmoid router + selection bias moved 0.001 per step toward equal
                load (DeepSeek-V3), no balancing loss
Scales: smoke (a few steps, CI), cpu (300 steps of 8 x 256 tokens: the README
table), gpu (moe_bench-sized arms for one H100), paper (= gpu; --dry_run).
"""

import ml_collections

from yijax.models import presets
from yijax.train.config import tiny_pretrain_config

ARMS = {
    "dense": {"model.mlp_dim": 468},
    "moe_aux": {"model.aux_loss_coef": 0.01},
    "moe_no_aux": {"model.aux_loss_coef": 0.0},
    "moe_aux_free": {"model.aux_loss_coef": 0.0, "model.router_type": "sigmoid",
                     "model.router_bias_update_rate": 0.001},
}
SCALES = {"smoke": (6, 8, 64), "cpu": (300, 8, 256), "gpu": (2000, 32, 2048), "paper": (2000, 32, 2048)}


def _arm(arm: str, scale: str) -> ml_collections.ConfigDict:
  from yijax import configlib

  steps, batch, seq_len = SCALES[scale]
  config = tiny_pretrain_config()
  model = "tiny" if arm == "dense" else "moe_tiny"
  if scale in ("gpu", "paper"):
    model = "yi_1p25b" if arm == "dense" else "moe_bench"
  config.model = presets.config_dict(model)
  overrides = dict(ARMS[arm]) if scale in ("smoke", "cpu") else {
      k: v for k, v in ARMS[arm].items() if k != "model.mlp_dim"}
  overrides.update({"train.steps": steps, "train.batch_size": batch, "train.seq_len": seq_len,
                    "optimizer.warmup_steps": max(steps // 10, 1), "eval.every_steps": 0,
                    "eval.batches": 2 if scale == "smoke" else 8, "eval.batch_size": 8,
                    "checkpoint.every_steps": max(steps // 2, 1), "train.progress_bar": False})
  if scale in ("gpu", "paper"):
    overrides.update({"model.dtype": "bfloat16", "model.max_seq_len": seq_len})
  return configlib.apply_overrides(config, overrides)


def get_config(scale="smoke"):
  if scale not in SCALES:
    raise ValueError(f"scale {scale!r} is not one of {sorted(SCALES)}")
  study = ml_collections.ConfigDict()
  study.study = "moe"
  study.scale = scale
  study.stages = ml_collections.ConfigDict()
  for arm in ARMS:
    study.stages[arm] = ml_collections.ConfigDict({"kind": "train", "depends_on": [], "run": _arm(arm, scale)})
  study.stages.report = ml_collections.ConfigDict({
      "kind": "python", "depends_on": list(ARMS), "fn": "experiments/moe/analysis.py:analyze",
      "args": {"arms": list(ARMS), "tail": 20}})
  return study
