"""Tiny MoE vs tiny dense at equal active parameters, and three ways to balance the experts.

  python experiments/moe/run.py --workdir=runs/moe_study [--steps=300]

Arms (same data, same tokens, same optimizer; each an ordinary yijax run dir
under --workdir, so a rerun resumes/skips them):
  dense         the tiny dense model with mlp_dim 468: 4.19M parameters, as many
                as the MoE's active parameters
  moe_aux       moe_tiny (16 experts top-2 + 1 shared, 8.32M total / 4.19M active),
                softmax router, load-balancing loss 0.01
  moe_no_aux    the same without any balancing
  moe_aux_free  sigmoid router + selection bias moved 0.001 per step toward equal
                load (DeepSeek-V3), no balancing loss
Writes WORKDIR/results.json and WORKDIR/report.md (the README's table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from yijax import configlib
from yijax.models import presets
from yijax.train import loop
from yijax.train.config import tiny_pretrain_config

ARMS = {
    "dense": {"model": "tiny", "model.mlp_dim": 468},
    "moe_aux": {"model": "moe_tiny", "model.aux_loss_coef": 0.01},
    "moe_no_aux": {"model": "moe_tiny", "model.aux_loss_coef": 0.0},
    "moe_aux_free": {"model": "moe_tiny", "model.aux_loss_coef": 0.0, "model.router_type": "sigmoid",
                     "model.router_bias_update_rate": 0.001},
}


def arm_config(arm: str, steps: int):
  overrides = dict(ARMS[arm])
  config = tiny_pretrain_config()
  config.model = presets.config_dict(overrides.pop("model"))
  overrides.update({"train.steps": steps, "eval.every_steps": 0, "eval.batches": 8,
                    "checkpoint.every_steps": max(steps // 2, 1), "train.progress_bar": False})
  return configlib.apply_overrides(config, overrides)


def summarize(run_dir: str, tail: int = 20) -> dict:
  records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  last = records[-tail:]
  out = {"train_loss_last": float(np.mean([r["loss"] for r in last])), "tokens": records[-1]["tokens_seen"],
         "steps": records[-1]["step"]}
  loads = sorted(k for k in last[-1] if k.startswith("moe/load_max_over_mean/"))
  if loads:
    out["load_max_over_mean"] = [float(np.mean([r[k] for r in last])) for k in loads]
  evals = [json.loads(line) for line in open(os.path.join(run_dir, "eval.jsonl"))]
  out.update({f"eval_{k}": v for k, v in evals[-1].items() if k in ("loss", "bits_per_byte", "perplexity")})
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--arms", default=",".join(ARMS))
  args = parser.parse_args(argv)
  results = {}
  for arm in args.arms.split(","):
    run_dir = os.path.join(args.workdir, arm)
    print(f"== {arm} -> {run_dir}", flush=True)
    loop.train(arm_config(arm, args.steps), run_dir)
    results[arm] = summarize(run_dir)
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  lines = ["| arm | train loss (last 20 steps) | held-out loss | bits/byte | max/mean expert load per MoE layer |",
           "|---|---|---|---|---|"]
  for arm, r in results.items():
    loads = ", ".join(f"{v:.2f}" for v in r.get("load_max_over_mean", [])) or "-"
    lines.append(f"| {arm} | {r['train_loss_last']:.3f} | {r['eval_loss']:.3f} | {r['eval_bits_per_byte']:.3f} "
                 f"| {loads} |")
  report = "\n".join(lines)
  with open(os.path.join(args.workdir, "report.md"), "w") as f:
    f.write(report + "\n")
  print(report)
  return 0


if __name__ == "__main__":
  sys.exit(main())
