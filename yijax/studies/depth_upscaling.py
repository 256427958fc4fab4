"""Stages of the depth up-scaling study: layer cosine, growth, report (results.json, report.md, PNGs)."""

import json
import logging

import ml_collections
import numpy as np

from yijax import models, paths, surgery
from yijax.analysis import layer_cosine
from yijax.analysis import growth
from yijax.studies import common
from yijax.errors import YijaxError
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


def candidate_blocks(per_layer, size: int, exclude_first: int, exclude_last: int) -> list[dict]:
  """Every contiguous block of `size` layers inside [exclude_first, L - exclude_last), with its mean cosine."""
  last = len(per_layer) - exclude_last
  return [{"block": [start, start + size], "mean_cosine": float(np.mean(per_layer[start:start + size]))}
          for start in range(exclude_first, last - size + 1)]


def plateau(run_dir: str, window: float) -> dict:
  """How much the source's held-out loss still fell over the last `window` of its pretraining steps: the loss
  at the last evaluation against the one at (1 - window) of the run, relative."""
  records = [json.loads(line) for line in paths.read_text(paths.join(run_dir, "eval.jsonl")).splitlines()
             if line.strip()]
  evals = [(int(r["step"]), float(r["loss"])) for r in records if "loss" in r]
  last_step, last_loss = evals[-1]
  cut = (1 - window) * last_step
  start_step, start_loss = min(evals, key=lambda e: (abs(e[0] - cut), e[0]))
  return {"window": window, "from_step": start_step, "to_step": last_step, "from_loss": start_loss,
          "to_loss": last_loss, "relative_improvement": (start_loss - last_loss) / start_loss}


class SourceStillImproving(YijaxError, RuntimeError):
  """The source has not reached a held-out plateau: growing it cannot answer what depth buys a saturated model."""


def cosine_stage(args, stage_dir, context) -> dict:
  """Layer cosine at every kept checkpoint of a run (or of one model), the candidate blocks and the block each
  policy picks; for a run, the plateau gate on its held-out loss (args.plateau: window, tolerance, enforce)."""
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
  first, last = int(args.get("exclude_first", 1)), int(args.get("exclude_last", 2))
  blocks = {arm: list(surgery.select_block(per_layer, args.block_size, policy, first, last))
            for arm, policy in args.policies.items()}
  middle = list(surgery.select_block(per_layer, args.block_size, "middle"))
  analogue = list(args.get("yi_analogue") or [])
  candidates = [dict(c, yi_analogue=c["block"] == analogue, middle=c["block"] == middle)
                for c in candidate_blocks(per_layer, args.block_size, first, last)]
  summary = {"per_layer": per_layer, "model_level": layer_cosine.model_level_cosine(per_layer), "trend": trend,
             "blocks": blocks, "middle": middle, "yi_analogue": analogue, "candidates": candidates}
  gate = dict(args.get("plateau") or {})
  if gate and paths.exists(paths.join(args.source, "eval.jsonl")):
    found = plateau(args.source, gate["window"])
    found.update(tolerance=gate["tolerance"], passed=found["relative_improvement"] <= gate["tolerance"])
    summary["plateau"] = found
    log.info(f"plateau gate: {json.dumps(found)}")
    if not found["passed"] and gate.get("enforce"):
      raise SourceStillImproving(
          f"the source's held-out loss still fell {found['relative_improvement']:.2%} over the last "
          f"{gate['window']:.0%} of pretraining ({found['from_loss']:.4f} at step {found['from_step']} -> "
          f"{found['to_loss']:.4f} at step {found['to_step']}; tolerance {gate['tolerance']:.2%}): it has not reached "
          "a plateau. Pretrain longer (--config.study.pretrain_steps) and rerun with a new --workdir")
  return summary


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


def _own_summary(context, name: str) -> dict:
  """Stage `name`'s summary: this seed's instance inside a seeded stage, else the stage's one."""
  seeded = f"{name}/seed{context.seed}"
  return context.summaries[seeded] if context.seed is not None and seeded in context.summaries else context.summaries[name]


def grow_stage(args, stage_dir, context) -> dict:
  """One grown model dir per arm (block duplicated right after itself), scored before and after growth
  (grown in a local directory and copied up when the stage dir is a gs:// URL)."""
  blocks = dict(args.blocks) or _own_summary(context, "cosine")["blocks"]
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
  """results.json, report.md and the PNGs over seeds (yijax/analysis/depth_upscaling.py)."""
  from yijax.analysis import depth_upscaling as analysis

  seeds = []
  for seed, pretrain_dir in enumerate(context.stage_dirs("pretrain")):
    runs = {arm: context.stage_dirs(f"continue_{arm}")[seed] for arm in args.arms}
    scratch_dir = context.stage_dirs(args.scratch)[seed]
    seeds.append({
        "cosine": context.seed_summaries("cosine")[seed], "grow": context.seed_summaries("grow")[seed],
        "pretrain_tokens": float(growth.tokens_by_step(pretrain_dir)[max(growth.tokens_by_step(pretrain_dir))]),
        "continued": {arm: _continued(run_dir) for arm, run_dir in runs.items()},
        "scratch": _curve(scratch_dir)})
  results = analysis.analyze(seeds, list(args.grown), args.scratch)
  results["scale"] = context.study.get("scale")
  paths.write_text(paths.join(context.workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
  lines = analysis.table(results)
  paths.write_text(paths.join(context.workdir, "report.md"), "\n".join(lines) + "\n")
  log.info("\n".join(lines))
  analysis.plots(results, context.workdir)
  return {"seeds": len(seeds), "verdicts": {c["id"]: c["verdict"] for c in results["claims"]}}


def _curve(run_dir: str) -> dict:
  config = params_io.read_model_config(run_dir)
  seq_len = paths.read_json(paths.join(run_dir, "config.json"), "the run config")["train"]["seq_len"]
  curve = growth.eval_curve(run_dir, flops.train_flops_per_token(config, seq_len))
  return {"layers": config.num_layers, **curve.to_json()}


def _continued(run_dir: str) -> dict:
  return {**_curve(run_dir), "batch_sizes": _batch_sizes(run_dir)}
