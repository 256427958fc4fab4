"""Stages of the depth up-scaling study: layer cosine, growth, report (results.json, report.md, PNGs)."""

import json
import logging

import ml_collections
import numpy as np

from yijax import models, paths, surgery
from yijax.analysis import layer_cosine
from yijax.analysis import growth, plots
from yijax.studies import common
from yijax.models.config import ConfigError
from yijax.train import flops, params_io

log = logging.getLogger(__name__)


def import_stage(args, stage_dir, context) -> dict:
  """Yi-6B from Hugging Face safetensors (paper scale)."""
  from yijax.convert import hf

  missing = [f"--config.study.{k}" for k in ("hf_dir", "data_dir", "data_dir_stage2") if not args[k]]
  if missing:
    raise ConfigError(f"the paper scale needs {', '.join(missing)}: the Yi-6B Hugging Face directory and the two "
                      "continual-pretraining mixtures prepared with Yi's tokenizer (`yijax prepare`)")
  with common.local_stage_dir(paths.join(stage_dir, "model"), replace=True) as out:
    config = hf.hf_to_yijax(args.hf_dir, out, overwrite=True)
  return {"layers": config.num_layers, "params": models.param_count(config)["total"]}


def cosine_stage(args, stage_dir, context) -> dict:
  """Layer cosine at every kept checkpoint of a run (or of one model), and the blocks each policy picks."""
  from yijax.data.tokenizer import Tokenizer
  from yijax.eval import checkpoints

  trend = []
  if paths.isdir(paths.join(args.source, "checkpoints")):
    out = checkpoints.evaluate_checkpoints(args.source, [checkpoints.LAYER_COSINE],
                                           out_path=paths.join(stage_dir, "checkpoints.jsonl"))
    by_checkpoint = {}
    for r in checkpoints.load_results(out):
      by_checkpoint.setdefault((r["tokens_seen"], r["step"]), {})[r["metric"]] = r["value"]
    trend = [{"tokens": t, "step": s, "model_level": m.get("model_level"),
              "per_layer": [m[f"layer/{i}"] for i in range(sum(k.startswith("layer/") for k in m))]}
             for (t, s), m in sorted(by_checkpoint.items())]
    per_layer = trend[-1]["per_layer"]
  else:
    location = params_io.locate_model(args.source)
    config, params = params_io.load_model(args.source)
    metrics = checkpoints.layer_cosine_metrics(config, params, Tokenizer(location.tokenizer))
    per_layer = [v for k, v in metrics.items() if k.startswith("layer/")]
  blocks = {arm: list(surgery.select_block(per_layer, args.block_size, policy)) for arm, policy in args.policies.items()}
  middle = list(surgery.select_block(per_layer, args.block_size, "middle"))
  return {"per_layer": per_layer, "model_level": layer_cosine.model_level_cosine(per_layer), "trend": trend,
          "blocks": blocks, "middle": middle}


def _held_out(run_dir: str, max_batches: int):
  """The held-out batches and byte table the run's own evaluations used (its config.json)."""
  from yijax.data import pipeline
  from yijax.data.tokenizer import Tokenizer

  run = ml_collections.ConfigDict(paths.read_json(paths.join(run_dir, "config.json"), "the run config"))
  batches = pipeline.eval_batches(run.data, run.data.eval_split, run.train.seq_len, run.eval.batch_size, max_batches)
  return batches, Tokenizer(paths.join(run_dir, params_io.TOKENIZER)).byte_lengths()


def _score(path: str, batches, byte_lengths) -> dict:
  from yijax.eval import perplexity

  config, params = params_io.load_model(path)
  result = perplexity.evaluate_perplexity(config.replace(remat_policy="none"), params, batches, byte_lengths)
  return {"loss": result["loss"], "bits_per_byte": result["bits_per_byte"]}


def grow_stage(args, stage_dir, context) -> dict:
  """One grown model dir per arm (block duplicated right after itself), scored before and after growth
  (grown in a local directory and copied up when the stage dir is a gs:// URL)."""
  blocks = dict(args.blocks) or context.summaries["cosine"]["blocks"]
  num_layers = params_io.read_model_config(args.source).num_layers
  held_out = _held_out(args.source, args.eval_batches) if args.eval_batches else None
  summary = {"source": _score(args.source, *held_out) if held_out else {}}
  for arm, (start, end) in blocks.items():
    order = surgery.block_order(num_layers, start, end)
    with common.local_stage_dir(paths.join(stage_dir, arm), replace=True) as out:
      made = surgery.grow_model_dir(args.source, out, order, overwrite=True)
      scores = _score(out, *held_out) if held_out else {}
    summary[arm] = {"block": [start, end], "order": order, "params": made["params"], **scores}
  return summary


def _batch_sizes(run_dir: str) -> list[list[float]]:
  """[[tokens seen, new batch size], ...] at the start and at every change of the batch size."""
  changes, last = [], None
  for line in paths.read_text(paths.join(run_dir, "metrics.jsonl")).splitlines():
    r = json.loads(line)
    if r["batch_size"] != last:
      changes.append([r["tokens_seen"], r["batch_size"]])
      last = r["batch_size"]
  return changes


def report_stage(args, stage_dir, context) -> dict:
  grown = context.summaries["grow"]
  cosine = context.summaries["cosine"]
  arms = {}
  for arm in args.arms:
    run_dir = context.stage_dir(f"continue_{arm}")
    config = params_io.read_model_config(run_dir)
    seq_len = paths.read_json(paths.join(run_dir, "config.json"), "the run config")["train"]["seq_len"]
    curve = growth.eval_curve(run_dir, flops.train_flops_per_token(config, seq_len))
    start = grown["source"] if arm == "control" else grown[arm]
    arms[arm] = {"layers": config.num_layers, "block": grown.get(arm, {}).get("block"),
                 "loss_after_growth": start["loss"], "bpb_after_growth": start["bits_per_byte"],
                 "curve": curve, "batch_sizes": _batch_sizes(run_dir)}
  common = min(a["curve"].tokens[-1] for a in arms.values())
  for a in arms.values():
    curve = a.pop("curve")
    tokens, loss = np.concatenate([[0.0], curve.tokens]), np.concatenate([[a["loss_after_growth"]], curve.loss])
    a.update({"final_tokens": float(curve.tokens[-1]), "final_loss": float(curve.loss[-1]),
              "final_bpb": float(curve.bits_per_byte[-1]), "loss_at_common_tokens": growth.value_at(tokens, loss, common),
              "curve": {"tokens": tokens.tolist(), "loss": loss.tolist()}})
  results = {"source_loss": grown["source"]["loss"], "source_bpb": grown["source"]["bits_per_byte"],
             "per_layer_cosine": cosine["per_layer"], "model_level_cosine": cosine["model_level"],
             "rule_block": cosine["blocks"].get("max_cosine"), "middle_block": cosine["middle"],
             "rule_picked_middle": cosine["blocks"].get("max_cosine") == cosine["middle"],
             "cosine_trend": [[t["tokens"], t["model_level"]] for t in cosine["trend"]],
             "common_tokens": common, "arms": arms}
  paths.write_text(paths.join(context.workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
  lines = _table(results)
  paths.write_text(paths.join(context.workdir, "report.md"), "\n".join(lines) + "\n")
  log.info("\n".join(lines))
  _plots(results, context.workdir)
  return {"rule_block": results["rule_block"], "arms": list(arms)}


def _table(results) -> list[str]:
  def block(b):
    return "-" if b is None else f"{b[0]}..{b[1] - 1}" + (" (middle)" if b == results["middle_block"] else "")

  lines = [f"Source (8 layers): held-out loss {results['source_loss']:.4f}, bits/byte {results['source_bpb']:.4f}. "
           f"Yi's rule picked layers {block(results['rule_block'])}; per-layer cosine "
           + ", ".join(f"{c:.3f}" for c in results["per_layer_cosine"]) + ".", "",
           f"| arm | duplicated | loss right after growth | loss at {results['common_tokens']:,.0f} tokens | "
           "final tokens | final loss | final bits/byte | batch sizes |", "|---|---|---|---|---|---|---|---|"]
  for arm, a in results["arms"].items():
    at = a["loss_at_common_tokens"]
    lines.append(f"| {arm} ({a['layers']}L) | {block(a['block'])} | {a['loss_after_growth']:.4f} | "
                 f"{'-' if at is None else f'{at:.4f}'} | {a['final_tokens']:,.0f} | {a['final_loss']:.4f} | "
                 f"{a['final_bpb']:.4f} | {' -> '.join(str(int(b)) for _, b in a['batch_sizes'])} |")
  return lines


def _plots(results, workdir) -> None:
  from yijax.analysis.plots import figures as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  trend = [(t, v) for t, v in results["cosine_trend"] if v is not None]
  if trend:
    left.plot(*zip(*trend), marker="o")
  left.set(xlabel="pretraining tokens", ylabel="model-level layer cosine", title="layer cosine over pretraining")
  if trend and trend[0][0] > 0 and trend[-1][0] / trend[0][0] > 20:
    left.set_xscale("log")
  right.bar(range(len(results["per_layer_cosine"])), results["per_layer_cosine"])
  right.set(xlabel="layer", ylabel="mean cosine(input, output)", title="per layer, final checkpoint")
  fig.tight_layout()
  plots.save(fig, paths.join(workdir, "layer_cosine.png"), dpi=100)
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, a in results["arms"].items():
    ax.plot(a["curve"]["tokens"], a["curve"]["loss"], marker=".", label=f"{arm} ({a['layers']}L)")
  ax.set(xlabel="tokens after growth", ylabel="held-out loss", title="continual pretraining after growth")
  ax.legend()
  fig.tight_layout()
  plots.save(fig, paths.join(workdir, "loss_vs_tokens.png"), dpi=100)
