"""The MoE study: a tiny MoE against a dense model of equal active parameters, and three ways to balance
the experts (experiments/moe/). Arm configs, and the report stage that turns every arm's seeds into
results.json (per-seed values, mean and se, computed claims) and report.md."""

from __future__ import annotations

import logging
import json

import ml_collections
import numpy as np

from yijax import paths
from yijax.analysis import plots, stats
from yijax.studies import common

log = logging.getLogger(__name__)

# arm -> (model preset at cpu/smoke scale, at gpu/paper scale, overrides)
ARMS = {
    "dense": ("tiny", "yi_1p25b", {"model.mlp_dim": 468}),
    "moe_aux": ("moe_tiny", "moe_bench", {"model.aux_loss_coef": 0.01}),
    "moe_no_aux": ("moe_tiny", "moe_bench", {"model.aux_loss_coef": 0.0}),
    "moe_aux_free": ("moe_tiny", "moe_bench", {"model.aux_loss_coef": 0.0, "model.router_type": "sigmoid",
                                               "model.router_bias_update_rate": 0.001}),
}
MOE_ARMS = ("moe_aux", "moe_no_aux", "moe_aux_free")


def arm_run(arm: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run config of one arm, its budget linked to the study knobs (config.study)."""
  from yijax import configlib
  from yijax.models import presets
  from yijax.train.config import tiny_pretrain_config

  small, large, overrides = ARMS[arm]
  big = config.scale in ("gpu", "paper")
  run = tiny_pretrain_config()
  run.model = presets.config_dict(large if big else small)
  # the dense arm's mlp_dim matches moe_tiny's active parameters; the gpu pair is matched by its presets
  configlib.apply_overrides(run, {k: v for k, v in overrides.items() if not (big and k == "model.mlp_dim")})
  study = config.study
  steps = study.get_ref("steps")
  common.link(run, {
      "train.steps": steps, "train.batch_size": study.get_ref("batch_size"), "train.seq_len": study.get_ref("seq_len"),
      "optimizer.lr": study.get_ref("lr"), "optimizer.warmup_steps": (steps + 9) // 10,
      "checkpoint.every_steps": (steps + 1) // 2, "eval.every_steps": 0,
      "eval.batches": study.get_ref("eval_batches"), "eval.batch_size": 8, "train.progress_bar": False})
  if big:
    common.link(run, {"model.dtype": "bfloat16", "model.max_seq_len": study.get_ref("seq_len")})
  return run


def arm_metrics(run_dir: str, tail: int) -> dict:
  """One seed of one arm: train loss over the last `tail` steps, held-out loss and bits per byte, and the
  max/mean expert load of each MoE layer (averaged over the last `tail` steps)."""
  records = [json.loads(line) for line in paths.read_text(paths.join(run_dir, "metrics.jsonl")).splitlines()]
  last = records[-tail:]
  out = {"train_loss": float(np.mean([r["loss"] for r in last])), "tokens": float(records[-1]["tokens_seen"])}
  loads = sorted((k for k in last[-1] if k.startswith("moe/load_max_over_mean/")), key=lambda k: int(k.split("/")[-1]))
  for i, key in enumerate(loads):
    out[f"load_max_over_mean_layer{i}"] = float(np.mean([r[key] for r in last]))
  if loads:
    out["load_max_over_mean"] = float(np.mean([out[f"load_max_over_mean_layer{i}"] for i in range(len(loads))]))
  evals = [json.loads(line) for line in paths.read_text(paths.join(run_dir, "eval.jsonl")).splitlines()]
  out["eval_loss"] = float(evals[-1]["loss"])
  out["eval_bits_per_byte"] = float(evals[-1]["bits_per_byte"])
  return out


def claims(per_seed: dict[str, dict[str, list[float]]]) -> list[dict]:
  """The comparisons the README makes, computed over paired seeds."""
  out = []
  for arm in MOE_ARMS:
    if arm in per_seed and "dense" in per_seed:
      out.append(stats.claim(
          f"{arm}_below_dense", f"{arm} has a lower held-out loss than dense at equal active parameters",
          "eval_loss", arm, "dense", per_seed[arm]["eval_loss"], per_seed["dense"]["eval_loss"], "a < b"))
  for other in ("moe_aux", "moe_aux_free"):
    if other in per_seed and "moe_no_aux" in per_seed:
      out.append(stats.claim(
          f"no_aux_below_{other.removeprefix('moe_')}", f"moe_no_aux has a lower held-out loss than {other}",
          "eval_loss", "moe_no_aux", other, per_seed["moe_no_aux"]["eval_loss"], per_seed[other]["eval_loss"],
          "a < b"))
      out.append(stats.claim(
          f"{other.removeprefix('moe_')}_balances", f"{other} keeps the busiest expert's load below moe_no_aux's "
          "(max/mean load, mean over MoE layers)", "load_max_over_mean", other, "moe_no_aux",
          per_seed[other]["load_max_over_mean"], per_seed["moe_no_aux"]["load_max_over_mean"], "a < b"))
  if "moe_aux" in per_seed and "moe_aux_free" in per_seed:
    out.append(stats.claim(
        "aux_balances_better_than_aux_free", "the balancing loss keeps the load more even than the "
        "aux-loss-free bias at this bias rate and budget", "load_max_over_mean", "moe_aux", "moe_aux_free",
        per_seed["moe_aux"]["load_max_over_mean"], per_seed["moe_aux_free"]["load_max_over_mean"], "a < b"))
  return out


def report(args, stage_dir, context) -> dict:
  """The report stage: results.json, report.md and loss_by_seed.png in the study dir."""
  per_seed: dict[str, dict[str, list[float]]] = {}
  for arm in args.arms:
    seeds = [arm_metrics(d, args.tail) for d in context.stage_dirs(arm)]
    per_seed[arm] = {k: [s[k] for s in seeds] for k in seeds[0]}
  results = {"study": "moe", "seeds": len(context.seeds), "tail": args.tail,
             "arms": {arm: stats.summarize(values) for arm, values in per_seed.items()},
             "claims": claims(per_seed)}
  paths.write_text(paths.join(context.workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
  markdown = render(results)
  paths.write_text(paths.join(context.workdir, "report.md"), markdown)
  plots.per_seed_points(paths.join(context.workdir, "eval_loss_by_seed.png"),
                        {arm: v["eval_loss"] for arm, v in per_seed.items()}, "held-out loss (nats/token)")
  log.info(markdown)
  return {"arms": list(per_seed), "verdicts": {c["id"]: c["verdict"] for c in results["claims"]}}


def render(results: dict) -> str:
  """report.md: the arms table (mean ± se over seeds) and the claims table."""
  tail, arms = results["tail"], results["arms"]
  fmt = stats.format_mean_se
  lines = [f"Mean ± standard error over {results['seeds']} paired seeds.", "",
           f"| arm | train loss (last {tail} steps) | held-out loss | bits/byte | max/mean expert load "
           "(mean over MoE layers) | per MoE layer |", "|---|---|---|---|---|---|"]
  for arm, m in arms.items():
    layers = sorted((k for k in m if k.startswith("load_max_over_mean_layer")), key=lambda k: int(k[24:]))
    load = fmt(m["load_max_over_mean"]["mean"], m["load_max_over_mean"]["se"], 2) if layers else "-"
    per_layer = ", ".join(f"{m[k]['mean']:.2f}" for k in layers) or "-"
    lines.append(f"| {arm} | {fmt(m['train_loss']['mean'], m['train_loss']['se'])} | "
                 f"{fmt(m['eval_loss']['mean'], m['eval_loss']['se'])} | "
                 f"{fmt(m['eval_bits_per_byte']['mean'], m['eval_bits_per_byte']['se'])} | {load} | {per_layer} |")
  lines += ["", "| claim | statement | a - b | se | seeds | verdict |", "|---|---|---|---|---|---|"]
  for c in results["claims"]:
    lines.append(f"| `{c['id']}` | {c['statement']} | {c['diff']:.4f} | {c['se']:.4f} | {c['n_seeds']} | "
                 f"{c['verdict']} |")
  return "\n".join(lines) + "\n"


def get_config(scale: str) -> ml_collections.ConfigDict:
  """The study config of experiments/moe/config.py."""
  knobs = common.by_scale(
      scale,
      smoke={"seeds": 1, "steps": 6, "batch_size": 8, "seq_len": 64, "lr": 3e-3, "eval_batches": 2},
      cpu={"seeds": 3, "steps": 300, "batch_size": 8, "seq_len": 256, "lr": 3e-3, "eval_batches": 8},
      gpu={"seeds": 2, "steps": 2000, "batch_size": 32, "seq_len": 2048, "lr": 3e-3, "eval_batches": 8},
      paper={"seeds": 2, "steps": 2000, "batch_size": 32, "seq_len": 2048, "lr": 3e-3, "eval_batches": 8})
  config = common.new_study("moe", scale, knobs)
  for arm in ARMS:
    config.stages[arm] = ml_collections.ConfigDict(
        {"kind": "train", "seeded": True, "depends_on": [], "run": arm_run(arm, config)})
  config.stages.report = ml_collections.ConfigDict({
      "kind": "python", "depends_on": list(ARMS), "fn": "yijax.studies.moe:report",
      "args": {"arms": list(ARMS), "tail": 20}})
  return config
