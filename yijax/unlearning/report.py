"""The unlearning study's report: results.json, report.md and the forget-vs-general plot.

An unlearning run counts as a success when it forgot and kept its knowledge
(approximate and general perplexity within `tolerance` of the original
model's). "Forgot" by the paper's proxy: forget-set perplexity at least the
approximate set's (the model no longer prefers the forget documents to unseen
ones of the same distribution); by the gold baseline, where one was trained:
forget perplexity at least that of the model retrained without the forget
set. Robustness of a method = its successes over the learning-rate x epochs grid.
"""

from __future__ import annotations

import logging
import json
import math

from yijax import paths
from yijax.unlearning import methods

log = logging.getLogger(__name__)

MODELS = "models"  # the evaluate stage writes one <model>.json per model here


def read_results(stage_dir: str, names) -> dict[str, dict]:
  """The per-model results an evaluate stage wrote."""
  return {name: paths.read_json(paths.join(stage_dir, MODELS, f"{name}.json"), f"the results of {name!r}")
          for name in names}


def _metrics(result: dict, sets, k: str) -> dict:
  out = {}
  for name in sets:
    out[f"{name}_ppl"] = result[name]["perplexity"]
    out[f"{name}_acc"] = result[name]["accuracy"]
  if "mia" in result:
    out["mia_auc"] = result["mia"]["auc"][k]
    out["mia_auc_by_k"] = result["mia"]["auc"]
  return out


def _tokens_flops(spec: dict, model, reference: bool = False) -> float | None:
  from yijax.unlearning import evaluate

  if not spec:
    return None
  if spec.get("flops"):
    return float(spec["flops"])
  if spec.get("tokens"):
    from yijax.train import flops

    return float(spec["tokens"]) * flops.train_flops_per_token(model, int(spec["seq_len"]))
  return evaluate.run_flops(model, int(spec["steps"]), int(spec["batch_size"]), int(spec["seq_len"]), reference)


def kept(arm: dict, original: dict, general: str, tolerance: float) -> bool:
  return bool(arm["approximate_ppl"] <= (1 + tolerance) * original["approximate_ppl"]
              and arm[f"{general}_ppl"] <= (1 + tolerance) * original[f"{general}_ppl"])


def build_results(args, context) -> dict:
  """results.json's content from the evaluate stage's per-model results and the run specs."""
  from yijax.train import params_io

  sets, k, general = list(args.sets), str(args.table_k), args.general_set
  names = [args.original] + ([args.retrain] if args.get("retrain") else []) + [a["name"] for a in args.arms]
  raw = read_results(context.stage_dir(args.evaluate_stage), names)
  model = params_io.read_model_config(raw[args.original]["model"])
  original = _metrics(raw[args.original], sets, k)
  results = {"original": original, "arms": {}, "tolerance": args.tolerance, "table_k": k, "sets": sets}
  pretrain_flops = _tokens_flops(dict(args.get("pretrain", {})), model)
  retrain_flops = _tokens_flops(dict(args.get("retrain_run", {})), model) or pretrain_flops
  results["flops"] = {"pretrain": pretrain_flops, "retrain": retrain_flops}
  if args.get("retrain"):
    retrain = _metrics(raw[args.retrain], sets, k)
    results["retrain"] = retrain
    results["proxy"] = {
        "retrain_forget_ppl": retrain["forget_ppl"], "retrain_approximate_ppl": retrain["approximate_ppl"],
        "original_forget_ppl": original["forget_ppl"], "original_approximate_ppl": original["approximate_ppl"],
        "retrain_mia_auc": retrain.get("mia_auc"), "original_mia_auc": original.get("mia_auc")}
  counts: dict[str, list[int]] = {}
  for arm in args.arms:
    arm = dict(arm)
    entry = {**arm, **_metrics(raw[arm["name"]], sets, k)}
    entry["flops"] = _tokens_flops(arm, model, methods.get(arm["method"]).reference)
    entry["retrain_over_unlearn_flops"] = retrain_flops / entry["flops"] if retrain_flops else None
    kept_knowledge = kept(entry, original, general, float(args.tolerance))
    entry["success"] = kept_knowledge and entry["forget_ppl"] >= entry["approximate_ppl"]
    if "retrain" in results:
      entry["success_gold"] = kept_knowledge and entry["forget_ppl"] >= results["retrain"]["forget_ppl"]
      entry["log_forget_ppl_gap_to_retrain"] = abs(math.log(entry["forget_ppl"]) -
                                                   math.log(results["retrain"]["forget_ppl"]))
    results["arms"][arm["name"]] = entry
    counts.setdefault(arm["method"], [0, 0, 0])
    counts[arm["method"]][0] += int(entry["success"])
    counts[arm["method"]][1] += 1
    counts[arm["method"]][2] += int(entry.get("success_gold", False))
  results["robustness"] = {m: {"successes": s, "settings": n, **({"gold_successes": g} if "retrain" in results else {})}
                           for m, (s, n, g) in counts.items()}
  fractions = {m: s / n for m, (s, n, _) in counts.items()}
  best = max(fractions.values(), default=0.0)
  results["most_robust"] = [m for m, f in fractions.items() if best > 0 and f == best]
  return results


def _row(label: str, r: dict, sets, settings: list[str], tail: list[str]) -> str:
  cells = [f"{r[f'{s}_ppl']:.2f}" for s in sets] + [f"{r[f'{s}_acc']:.3f}" for s in sets]
  cells.append(f"{r['mia_auc']:.3f}" if r.get("mia_auc") is not None else "-")
  return "| " + " | ".join([label] + settings + cells + tail) + " |"


def markdown(results: dict) -> str:
  sets, k = results["sets"], results["table_k"]
  head = (["model", "LR", "epochs", "steps"] + [f"{s} ppl" for s in sets] + [f"{s} acc" for s in sets] +
          [f"MIA AUC (K={k}%)", "retrain / unlearn FLOPs", "success (proxy / gold)"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines.append(_row("original", results["original"], sets, ["-"] * 3, ["-", "-"]))
  if "retrain" in results:
    lines.append(_row("retrain (gold)", results["retrain"], sets, ["-"] * 3, ["-", "-"]))
  for r in results["arms"].values():
    ratio = r["retrain_over_unlearn_flops"]
    lines.append(_row(methods.get(r["method"]).label, r, sets, [f"{r['lr']:g}", str(r["epochs"]), str(r["steps"])],
                      [f"{ratio:.3g}" if ratio else "-", _yes(r["success"]) + (
                          f" / {_yes(r['success_gold'])}" if "success_gold" in r else "")]))
  lines.append("")
  gold = " (gold: forget ppl >= the retrained model's)" if "retrain" in results else ""
  lines.append("Success: forget ppl >= approximate ppl" + gold + ", and approximate and general ppl within "
               f"{results['tolerance']:.0%} of the original's. Robustness (proxy successes / settings"
               + (", gold successes" if gold else "") + "): " +
               ", ".join(f"{methods.get(m).label} {v['successes']}/{v['settings']}" +
                         (f", {v['gold_successes']}" if gold else "") for m, v in results["robustness"].items()) + ".")
  return "\n".join(lines) + "\n"


def _yes(flag: bool) -> str:
  return "yes" if flag else "no"


def plot(results: dict, path: str, general: str) -> None:
  """Forget vs general perplexity across learning rates, one line per method, one panel per epoch count."""
  from yijax.analysis import plots
  from yijax.analysis.plots import figures as plt

  arms = list(results["arms"].values())
  epochs = sorted({a["epochs"] for a in arms})
  fig, axes = plt.subplots(1, len(epochs), figsize=(5.5 * len(epochs), 4.5), squeeze=False)
  for ax, epoch in zip(axes[0], epochs):
    for method in methods.METHODS:
      points = sorted((a["lr"], a["forget_ppl"], a[f"{general}_ppl"]) for a in arms
                      if a["method"] == method and a["epochs"] == epoch)
      if points:
        ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=methods.get(method).label)
    for label, key, marker in (("original", "original", "*"), ("retrain", "retrain", "P")):
      if key in results:
        ax.scatter([results[key]["forget_ppl"]], [results[key][f"{general}_ppl"]], marker=marker, s=150,
                   color="black", zorder=5, label=label)
    ax.axvline(results["original"]["approximate_ppl"], color="gray", ls="--", label="original approximate ppl")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("forget perplexity")
    ax.set_ylabel(f"{general} perplexity")
    ax.set_title(f"{epoch} epoch(s); points: learning rates (low to high)")
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  plots.save(fig, path, dpi=120)


def write_report(args, stage_dir: str, context) -> dict:
  """results.json, report.md and forget_vs_general.png in the study dir."""
  results = build_results(args, context)
  paths.write_text(paths.join(context.workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
  text = markdown(results)
  paths.write_text(paths.join(context.workdir, "report.md"), text)
  plot(results, paths.join(context.workdir, "forget_vs_general.png"), args.general_set)
  log.info(text)
  return {"arms": len(results["arms"]), "most_robust": results["most_robust"]}
