"""Stages of the G_stack study (experiments/growth): grow each arm's small model, then the report over seeds.

  grow_stage    (seeded) each arm's grown model dir from its seed's small model checkpoint at d
  report_stage  results.json, report.md, growth.png: each arm's final loss against scratch at the same total
                tokens D, and its speedup (tokens and FLOPs to reach scratch's seed-mean final loss, the
                small model's included) per seed against the scratch seed mean, as computed claims
"""

import json
import logging

import numpy as np

from yijax import paths, surgery
from yijax.analysis import growth, plots, stats
from yijax.studies import common
from yijax.train import flops, params_io

log = logging.getLogger(__name__)

ORDERS = {"stack": surgery.stack_order, "interpolation": surgery.interpolation_order}
LABELS = {"g4_d5": "G_stack d=5%", "g4_d10": "G_stack d=10%", "random_g4_d10": "G_random d=10%"}


def grow_stage(args, stage_dir, context) -> dict:
  """Each arm's grown model dir, from this seed's small model at its growth point d (grown in a local
  directory and copied up when the stage dir is a gs:// URL). G_random's new layers are drawn with the seed."""
  summary = {}
  seed = context.seed or 0
  for arm, spec in args.arms.items():
    small_layers = params_io.read_model_config(spec.source).num_layers
    order = ORDERS[spec.order](small_layers, spec.times)
    with common.local_stage_dir(paths.join(stage_dir, arm), replace=True) as out:
      made = surgery.grow_model_dir(spec.source, out, order, spec.new_layers, seed=seed, overwrite=True)
    summary[arm] = {"order": order, "new_layers": spec.new_layers, "small_layers": small_layers,
                    "layers": made["layers"], "small_stage": spec.small_stage, "d_steps": spec.d_steps,
                    "small_params": made["source_params"], "seed": seed}
  return summary


def _flops_per_token(run_dir: str) -> float:
  seq_len = paths.read_json(paths.join(run_dir, "config.json"), "the run config")["train"]["seq_len"]
  return flops.train_flops_per_token(params_io.read_model_config(run_dir), seq_len)


def _mean_se(values) -> dict:
  mean, se = stats.mean_se(values)
  return {"mean": mean, "se": se, "values": [float(v) for v in values]}


def _arm_curves(arm: str, context) -> tuple[list, dict]:
  """The arm's curves, one per seed, each shifted by its small model's tokens and FLOPs at d."""
  grown = context.seed_summaries("grow")
  curves, small_tokens, small_flops = [], [], []
  for seed, (run_dir, small_dir) in enumerate(zip(context.stage_dirs(arm), context.stage_dirs("small_g4"))):
    spec = grown[seed][arm]
    tokens = growth.tokens_by_step(small_dir)[spec["d_steps"]]
    cost = tokens * _flops_per_token(small_dir)
    curves.append(growth.eval_curve(run_dir, _flops_per_token(run_dir), tokens, cost))
    small_tokens.append(tokens)
    small_flops.append(cost)
  spec = grown[0][arm]
  return curves, {"g": spec["layers"] // spec["small_layers"], "order": spec["order"], "new_layers": spec["new_layers"],
                  "d_steps": spec["d_steps"], "small_params": spec["small_params"],
                  "d_tokens": float(np.mean(small_tokens)), "small_flops": float(np.mean(small_flops))}


def analyze(scratch: list, arms: dict[str, tuple[list, dict]], stack_arm: str, random_arm: str) -> dict:
  """Per-arm results and the claims, from the scratch curves and each arm's (curves, spec), seeds in order."""
  scratch_final = [float(c.loss[-1]) for c in scratch]
  total_tokens = float(np.mean([c.tokens[-1] for c in scratch]))
  out, claims = {}, []
  for arm, (curves, spec) in arms.items():
    final = [float(c.loss[-1]) for c in curves]
    speed = {field: growth.seed_speedup(scratch, curves, field) for field in ("tokens", "flops")}
    out[arm] = {**spec, "label": LABELS.get(arm, arm), "seeds": len(curves), "d_fraction": spec["d_tokens"] / total_tokens,
                "final_loss": _mean_se(final), "final_bpb": _mean_se([float(c.bits_per_byte[-1]) for c in curves]),
                "final_tokens": float(np.mean([c.tokens[-1] for c in curves])),
                "final_flops": float(np.mean([c.flops[-1] for c in curves])),
                "speedup": speed, "curves": [c.to_json() for c in curves]}
    label = LABELS.get(arm, arm)
    n = min(len(final), len(scratch_final))
    claims.append(stats.claim(f"{arm}_lower_loss", f"{label} ends below scratch's held-out loss at the same total "
                              "tokens D (seed by seed)", "final held-out loss", arm, "scratch", final[:n],
                              scratch_final[:n], "a < b"))
    claims.append(growth.speedup_claim(arm, label, speed["tokens"], "tokens"))
    claims.append(growth.speedup_claim(arm, label, speed["flops"], "flops"))
  if stack_arm in out and random_arm in out:
    a, b = out[stack_arm]["final_loss"]["values"], out[random_arm]["final_loss"]["values"]
    n = min(len(a), len(b))
    claims.append(stats.claim("stack_beats_random", f"{LABELS.get(stack_arm, stack_arm)} ends below "
                              f"{LABELS.get(random_arm, random_arm)} at the same tokens (seed by seed)",
                              "final held-out loss", stack_arm, random_arm, a[:n], b[:n], "a < b"))
  return {"arms": out, "claims": claims}


def report_stage(args, stage_dir, context) -> dict:
  scratch_dirs = context.stage_dirs("scratch")
  scratch = [growth.eval_curve(d, _flops_per_token(d)) for d in scratch_dirs]
  arms = {arm: _arm_curves(arm, context) for arm in args.arms}
  analysis = analyze(scratch, arms, args.stack_arm, args.random_arm)
  small_cost = _flops_per_token(context.stage_dirs("small_g4")[0]) / _flops_per_token(scratch_dirs[0])
  results = {
      "scale": context.study.get("scale"), "seeds": len(scratch),
      "target_params": args.target_params, "target_layer_params": args.target_layer_params,
      "layer_share": args.target_layer_params / args.target_params, "target_tokens": args.target_tokens,
      "small_cost_per_token": small_cost,
      "scratch": {"final_loss": _mean_se([float(c.loss[-1]) for c in scratch]),
                  "final_bpb": _mean_se([float(c.bits_per_byte[-1]) for c in scratch]),
                  "final_tokens": float(np.mean([c.tokens[-1] for c in scratch])),
                  "final_flops": float(np.mean([c.flops[-1] for c in scratch])),
                  "curves": [c.to_json() for c in scratch]},
      **analysis,
      "formula_d_tokens": args.formula_d_tokens, "formula_d_fraction": args.formula_d_tokens / args.target_tokens,
      "formula_in_range": 4.1e8 <= args.target_params <= 7e9,
  }
  paths.write_text(paths.join(context.workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
  lines = table(results)
  paths.write_text(paths.join(context.workdir, "report.md"), "\n".join(lines) + "\n")
  log.info("\n".join(lines))
  _plot(results, context.workdir)
  return {"seeds": len(scratch), "verdicts": {c["id"]: c["verdict"] for c in results["claims"]}}


def _speed(s: dict) -> str:
  if s["mean"] is None:
    return f"not reached ({s['reached']}/{s['seeds']} seeds)"
  return f"{100 * s['mean']:+.1f}% ± {100 * s['se']:.1f}%" if np.isfinite(s["se"]) else f"{100 * s['mean']:+.1f}%"


def _number(value, digits: int = 4) -> str:
  return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def table(results) -> list[str]:
  scratch = results["scratch"]
  loss = scratch["final_loss"]
  lines = [f"Target: {results['target_params']:,} parameters ({100 * results['layer_share']:.0f}% in its layers), "
           f"D = {results['target_tokens']:,} tokens, {results['seeds']} paired seeds; the small model costs "
           f"{results['small_cost_per_token']:.2f} x the target per token. Scratch: final held-out loss "
           f"L* = {stats.format_mean_se(loss['mean'], loss['se'], 4)} (seed mean ± se) at "
           f"{scratch['final_tokens']:,.0f} tokens, {scratch['final_flops']:.3g} FLOPs.", "",
           "| arm | new layers | d (tokens) | d / D | final loss | tokens to L* | speedup (tokens) | speedup (FLOPs) |",
           "|---|---|---|---|---|---|---|---|"]
  for arm, a in results["arms"].items():
    t = a["speedup"]["tokens"]
    reached = "not reached" if t["cost_mean"] is None else f"{t['cost_mean']:,.0f}"
    lines.append(f"| {arm} | {a['new_layers']} | {a['d_tokens']:,.0f} | {a['d_fraction']:.3f} | "
                 f"{stats.format_mean_se(a['final_loss']['mean'], a['final_loss']['se'], 4)} | {reached} | "
                 f"{_speed(t)} | {_speed(a['speedup']['flops'])} |")
  lines += ["", "| claim | statement | diff | se | seeds | verdict |", "|---|---|---|---|---|---|"]
  for c in results["claims"]:
    lines.append(f"| `{c['id']}` | {c['statement']} | {_number(c['diff'])} | {_number(c['se'])} | {c['n_seeds']} | "
                 f"{c['verdict']} |")
  lines += ["", f"The paper's growth-timing formula gives d = {results['formula_d_tokens']:.3g} tokens "
            f"({results['formula_d_fraction']:.3g} x D)"
            + ("." if results["formula_in_range"] else
               ", outside its fitted range (targets of about 410M-7B parameters): it says nothing here.")]
  return lines


def _mean_curve(curves: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  n = min(len(c["loss"]) for c in curves)
  return (np.mean([c[key][:n] for c in curves], axis=0), np.mean([c["loss"][:n] for c in curves], axis=0))


def _plot(results, workdir) -> None:
  from yijax.analysis.plots import figures as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  curves = {"scratch": results["scratch"]["curves"], **{a: r["curves"] for a, r in results["arms"].items()}}
  for ax, key, label in zip(axes, ("tokens", "flops"), ("tokens (small model's included)",
                                                          "training FLOPs (small model at its own cost)")):
    for name, runs in curves.items():
      style = {"color": "black", "linewidth": 2} if name == "scratch" else {}
      ax.plot(*_mean_curve(runs, key), label=name, **style)
    ax.axhline(results["scratch"]["final_loss"]["mean"], color="gray", linestyle=":", linewidth=1)
    ax.set(xlabel=label, ylabel="held-out loss (seed mean)", title=f"loss against {key}")
    ax.legend(fontsize=7)
  fig.tight_layout()
  plots.save(fig, paths.join(workdir, "growth.png"), dpi=100)
