"""The MoE study's report: losses and expert-load balance of each arm (results.json, report.md)."""

import json
import os

import numpy as np


def summarize(run_dir: str, tail: int) -> dict:
  records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  last = records[-tail:]
  out = {"train_loss_last": float(np.mean([r["loss"] for r in last])), "tokens": records[-1]["tokens_seen"],
         "steps": records[-1]["step"]}
  loads = sorted((k for k in last[-1] if k.startswith("moe/load_max_over_mean/")), key=lambda k: int(k.split("/")[-1]))
  if loads:
    out["load_max_over_mean"] = [round(float(np.mean([r[k] for r in last])), 3) for k in loads]
  evals = [json.loads(line) for line in open(os.path.join(run_dir, "eval.jsonl"))]
  out.update({f"eval_{k}": v for k, v in evals[-1].items() if k in ("loss", "bits_per_byte")})
  return out


def analyze(args, stage_dir, context) -> dict:
  results = {arm: summarize(context.stage_dir(arm), args.tail) for arm in args.arms}
  lines = [f"| arm | train loss (last {args.tail} steps) | held-out loss | bits/byte | "
           "max/mean expert load per MoE layer |", "|---|---|---|---|---|"]
  for arm, r in results.items():
    loads = ", ".join(f"{v:.2f}" for v in r.get("load_max_over_mean", [])) or "-"
    lines.append(f"| {arm} | {r['train_loss_last']:.3f} | {r['eval_loss']:.3f} | {r['eval_bits_per_byte']:.3f} | "
                 f"{loads} |")
  with open(os.path.join(context.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  with open(os.path.join(context.workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return {"arms": list(results)}
