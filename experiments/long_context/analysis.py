"""The long-context study's report: needle scores by length before and after extension (results.json,
report.md, the heatmaps as DIR/<needle stage>.png)."""

import json
import os
import shutil

import numpy as np


def _train_summary(run_dir: str, run) -> dict:
  records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  tail = records[-max(1, len(records) // 10):]
  return {"steps": records[-1]["step"], "tokens": records[-1]["tokens_seen"],
          "loss_last": float(np.mean([r["loss"] for r in tail])), "rope_theta": float(run.model.rope_theta),
          "seq_len": int(run.train.seq_len), "batch_size": int(run.train.batch_size), "lr": float(run.optimizer.lr),
          "schedule": run.optimizer.schedule, "length_upsampling": run.data.length_upsampling.to_dict(),
          "sources": run.data.sources.to_dict()}


def report_stage(args, stage_dir, context) -> dict:
  stages = context.study.stages
  results = {"data": context.summaries["data"], "train": {}, "needle": {}}
  for name in ["pretrain"] + list(args.arms):
    results["train"][name] = _train_summary(context.stage_dir(name), stages[name].run)
  for name in args.needles:
    summary = context.summaries[name]
    results["needle"][name] = {k: summary[k] for k in ("mean_score", "by_length", "rope_theta", "cells", "keys")}
    shutil.copyfile(os.path.join(context.stage_dir(name), "needle.png"), os.path.join(context.workdir, f"{name}.png"))
  buckets = list(results["needle"][args.needles[0]]["by_length"])
  header = "| model | rope_theta | trained at | " + " | ".join(f"length {b}" for b in buckets) + " | all |"
  lines = [f"Mean pass-key score (fraction of cells x keys answered) by context length, {args.short} -> "
           f"{args.long} tokens.", "", header, "|---" * (len(buckets) + 4) + "|"]
  for name in args.needles:
    n = results["needle"][name]
    arm = "pretrain" if name == "needle_before" else "extend" + name[len("needle_after"):]
    t = results["train"][arm]
    lines.append(f"| {name} | {n['rope_theta']:g} | {t['seq_len']} | "
                 + " | ".join(f"{n['by_length'].get(b, float('nan')):.3f}" for b in buckets)
                 + f" | {n['mean_score']:.3f} |")
  lines += ["", "| run | steps | tokens | seq_len | lr (schedule) | rope_theta | length upsampling | final loss |",
            "|---|---|---|---|---|---|---|---|"]
  for name, t in results["train"].items():
    up = t["length_upsampling"]
    upsampling = "none" if up["mode"] == "none" else f"{up['mode']} (> {up['threshold']} kept, short p={up['keep_short_prob']})"
    lines.append(f"| {name} | {t['steps']} | {t['tokens']:,} | {t['seq_len']} | {t['lr']:g} ({t['schedule']}) | "
                 f"{t['rope_theta']:g} | {upsampling} | {t['loss_last']:.3f} |")
  with open(os.path.join(context.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  with open(os.path.join(context.workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines), flush=True)
  return {"needle": {k: v["mean_score"] for k, v in results["needle"].items()}}
