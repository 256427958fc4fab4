"""Stages of the G_stack study: grow each arm's small model, then the report (results.json, report.md, PNGs)."""

import json
import logging

import numpy as np

from yijax import paths, surgery
from yijax.analysis import growth, plots
from yijax.studies import common
from yijax.train import flops, params_io

log = logging.getLogger(__name__)

ORDERS = {"stack": surgery.stack_order, "interpolation": surgery.interpolation_order}


def grow_stage(args, stage_dir, context) -> dict:
  """Each arm's grown model dir, from its small model's checkpoint at the growth point d (grown in a local
  directory and copied up when the stage dir is a gs:// URL)."""
  summary = {}
  for arm, spec in args.arms.items():
    small_layers = params_io.read_model_config(spec.source).num_layers
    order = ORDERS[spec.order](small_layers, spec.times)
    with common.local_stage_dir(paths.join(stage_dir, arm), replace=True) as out:
      made = surgery.grow_model_dir(spec.source, out, order, spec.new_layers, overwrite=True)
    summary[arm] = {"order": order, "new_layers": spec.new_layers, "small_layers": small_layers,
                    "layers": made["layers"], "small_stage": spec.small_stage, "d_steps": spec.d_steps}
  return summary


def _flops_per_token(run_dir: str) -> float:
  seq_len = paths.read_json(paths.join(run_dir, "config.json"), "the run config")["train"]["seq_len"]
  return flops.train_flops_per_token(params_io.read_model_config(run_dir), seq_len)


def report_stage(args, stage_dir, context) -> dict:
  scratch_dir = context.stage_dir("scratch")
  scratch = growth.eval_curve(scratch_dir, _flops_per_token(scratch_dir))
  total_tokens = float(scratch.tokens[-1])  # D as measured (tokens that are not padding)
  grown = context.summaries["grow"]
  arms = {}
  for arm in args.arms:
    spec = grown[arm]
    small_dir = context.stage_dir(spec["small_stage"])
    small_tokens = growth.tokens_by_step(small_dir)[spec["d_steps"]]
    small_flops = small_tokens * _flops_per_token(small_dir)
    run_dir = context.stage_dir(arm)
    curve = growth.eval_curve(run_dir, _flops_per_token(run_dir), small_tokens, small_flops)
    arms[arm] = {"g": spec["layers"] // spec["small_layers"], "order": spec["order"][:12],
                 "new_layers": spec["new_layers"], "d_tokens": small_tokens, "d_fraction": small_tokens / total_tokens,
                 "small_flops": small_flops, "final_loss": float(curve.loss[-1]),
                 "final_bpb": float(curve.bits_per_byte[-1]), "final_flops": float(curve.flops[-1]),
                 **growth.speedup(scratch, curve), "curve": curve.to_json()}
  sweep = {a: r for a, r in arms.items() if a.startswith("g4_d")}
  best = max(sweep, key=lambda a: (-1e9 if sweep[a]["speedup"] is None else sweep[a]["speedup"], -sweep[a]["final_loss"]),
             default=None)
  results = {
      "target_params": args.target_params, "target_tokens": args.target_tokens,
      "scratch": {"final_loss": float(scratch.loss[-1]), "final_bpb": float(scratch.bits_per_byte[-1]),
                  "final_flops": float(scratch.flops[-1]), "curve": scratch.to_json()},
      "arms": arms, "best_d_arm": best, "best_d_tokens": arms[best]["d_tokens"] if best else None,
      "formula_d_tokens": args.formula_d_tokens,
      "formula_d_fraction": args.formula_d_tokens / args.target_tokens,
      "formula_in_range": 4.1e8 <= args.target_params <= 7e9,
  }
  paths.write_text(paths.join(context.workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
  lines = _table(results)
  paths.write_text(paths.join(context.workdir, "report.md"), "\n".join(lines) + "\n")
  log.info("\n".join(lines))
  _plot(results, context.workdir)
  return {"best_d_arm": best, "speedups": {a: r["speedup"] for a, r in arms.items()}}


def _table(results) -> list[str]:
  scratch = results["scratch"]
  lines = [f"Target: {results['target_params']:,} parameters, D = {results['target_tokens']:,} tokens. Scratch: final "
           f"held-out loss L* = {scratch['final_loss']:.4f} ({scratch['final_bpb']:.4f} bits/byte) at "
           f"{scratch['final_flops']:.3g} FLOPs.", "",
           "| arm | g | order | new layers | d (tokens) | d / D | final loss | final bits/byte | FLOPs to L* | speedup |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for arm, a in results["arms"].items():
    reached = "not reached" if a["grown_flops"] is None else f"{a['grown_flops']:.3g}"
    gain = "-" if a["speedup"] is None else f"{100 * a['speedup']:+.1f}%"
    lines.append(f"| {arm} | {a['g']} | {a['order'][:6]}... | {a['new_layers']} | {a['d_tokens']:,.0f} | "
                 f"{a['d_fraction']:.3f} | {a['final_loss']:.4f} | {a['final_bpb']:.4f} | {reached} | {gain} |")
  lines += ["", f"Best measured d (g = 4 sweep): {results['best_d_arm']} ({results['best_d_tokens'] or 0:,.0f} tokens). "
            f"The paper's formula gives d = {results['formula_d_tokens']:.3g} tokens "
            f"({results['formula_d_fraction']:.3g} x D)"
            + ("." if results["formula_in_range"] else
               ", outside its fitted range (targets of about 410M-7B parameters): it says nothing here.")]
  return lines


def _plot(results, workdir) -> None:
  from yijax.analysis.plots import figures as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  curves = {"scratch": results["scratch"]["curve"], **{a: r["curve"] for a, r in results["arms"].items()}}
  for name, curve in curves.items():
    style = {"color": "black", "linewidth": 2} if name == "scratch" else {}
    left.plot(curve["flops"], curve["loss"], label=name, **style)
  left.axhline(results["scratch"]["final_loss"], color="gray", linestyle=":", linewidth=1)
  left.set(xlabel="training FLOPs (small model at its own cost)", ylabel="held-out loss", title="loss against FLOPs")
  left.legend(fontsize=7)
  sweep = [(r["d_fraction"], r["speedup"]) for a, r in results["arms"].items() if a.startswith("g4_d")]
  right.plot([100 * f for f, _ in sweep], [np.nan if s is None else 100 * s for _, s in sweep], marker="o")
  right.axhline(0, color="gray", linewidth=1)
  right.set(xscale="log", xlabel="d / D (%)", ylabel="speedup at L* (%)", title="G_stack (g = 4): growth timing")
  fig.tight_layout()
  plots.save(fig, paths.join(workdir, "growth.png"), dpi=100)
