"""The unlearning study's report: results.json, report.md and one path plot per setting.

Success is judged against the gold model (the same training without the forget data) and its seed band,
never against a fixed tolerance: on every metric of the setting (forget, approximate / retain, general,
membership inference) a model must be indistinguishable from the gold model, |value - gold mean| <= k se
with se from the gold seeds' spread and the measurement noise of the metric (stats.gold_band). The gold
model passes by construction; the original model must fail (else the setting cannot show unlearning).

Per method and learning rate the evaluate stage scored the model after every epoch: its path in (forget,
utility) space. A learning rate is in the method's robust range when its final model is within the gold band
on every metric; the point closest to gold is the (learning rate, epoch) of least distance, the largest
|diff| / se over the metrics (within the band <=> distance <= k).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np

from yijax import paths
from yijax.analysis import stats
from yijax.unlearning import methods

log = logging.getLogger(__name__)

MODELS = "models"  # the evaluate stage writes one <label>.json per model here
K = 2.0


def read_result(evaluate_dir: str, label: str) -> dict:
  return paths.read_json(paths.join(evaluate_dir, MODELS, f"{label}.json"), f"the results of {label!r}")


def _auc_se(auc: float, members: int, nonmembers: int) -> float:
  """Hanley & McNeil (1982) standard error of a ROC AUC from its two sample sizes."""
  q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
  var = (auc * (1 - auc) + (members - 1) * (q1 - auc * auc) + (nonmembers - 1) * (q2 - auc * auc))
  return math.sqrt(max(var, 0.0) / (members * nonmembers))


def metric(result: dict, spec: dict) -> tuple[float, float]:
  """(value, measurement se) of one metric spec {key, kind, set | task | k} in a model's results."""
  kind = spec["kind"]
  if kind == "task":
    task = result["tasks"][spec["task"]]
    return float(task["acc"]), stats.binomial_se(float(task["acc"]), int(task["n"]))
  if kind == "loss":
    entry = result[spec["set"]]
    return float(entry["loss"]), float(entry["loss_se"])
  if kind == "bpb":
    entry = result[spec["set"]]
    value = float(entry["bits_per_byte"])
    return value, value * float(entry["loss_se"]) / max(float(entry["loss"]), 1e-9)
  if kind == "mia":
    auc, n = float(result["mia"]["auc"][str(spec.get("k", "100"))]), int(result["mia"]["members"])
    return auc, _auc_se(auc, n, n)
  raise ValueError(f"unknown metric kind {kind!r}")


def _values(result: dict, specs: list[dict]) -> tuple[dict, dict]:
  values, ses = {}, {}
  for spec in specs:
    values[spec["key"]], ses[spec["key"]] = metric(result, spec)
  return values, ses


def band_test(values: dict, ses: dict, gold: dict, specs: list[dict], k: float = K) -> dict:
  """Per metric stats.gold_band of one model (one run) against the gold seeds; "distance" = the largest
  |diff| / se (units of se: within every band <=> distance <= k), "success" = within on every metric."""
  out, distance = {}, 0.0
  for spec in specs:
    key = spec["key"]
    floor = math.sqrt(ses[key] ** 2 + float(np.mean(gold["se"][key])) ** 2)
    band = stats.gold_band([values[key]], gold["values"][key], k=k, floor_se=floor)
    out[key] = band["within"]
    distance = max(distance, abs(band["diff"]) / band["se"])
  return {"within": out, "distance": distance, "success": all(out.values())}


def _seeds(evaluate_dir: str, stage: str, seeds: list[int], specs: list[dict]) -> dict:
  values = {s["key"]: [] for s in specs}
  ses = {s["key"]: [] for s in specs}
  for seed in seeds:
    v, e = _values(read_result(evaluate_dir, f"{stage}_seed{seed}"), specs)
    for key in values:
      values[key].append(v[key])
      ses[key].append(e[key])
  summary = {key: dict(zip(("mean", "se"), stats.mean_se(vals))) for key, vals in values.items()}
  return {"values": values, "se": ses, "summary": summary}


def _run_config(run_dir: str) -> dict:
  return paths.read_json(paths.join(run_dir, "config.json"), f"the config of run {run_dir}")


def _run_flops(run_dir: str, model, reference: bool) -> float:
  from yijax.unlearning import evaluate

  config = _run_config(run_dir)
  return evaluate.run_flops(model, int(config["train"]["steps"]), int(config["train"]["batch_size"]),
                            int(config["train"]["seq_len"]), reference)


def setting_results(setting: dict, context, name: str = "") -> dict:
  """One setting's results: original and gold per seed, the band checks, every arm's path, per method its
  robust learning rates and its point closest to gold. Claim ids start with the setting's name."""
  from yijax.train import params_io

  specs = [dict(s) for s in setting["metrics"]]
  evaluate_dir = context.stage_dir(setting["evaluate_stage"])
  seeds = context.seeds
  original = _seeds(evaluate_dir, setting["original"], seeds, specs)
  out = {"metrics": specs, "k": K, "seeds": len(seeds), "original": original, "arms": {}, "methods": {},
         "forget_metric": setting["forget_metric"], "utility_metric": setting["utility_metric"]}
  gold = _seeds(evaluate_dir, setting["gold"], seeds, specs) if setting.get("gold") else None
  banded = gold is not None and len(seeds) >= 2
  if gold is not None:
    out["gold"] = gold
  if banded:
    out["checks"] = {
        "gold_seeds": [band_test({k: v[i] for k, v in gold["values"].items()},
                                 {k: v[i] for k, v in gold["se"].items()}, gold, specs) for i in range(len(seeds))],
        "original_seeds": [band_test({k: v[i] for k, v in original["values"].items()},
                                     {k: v[i] for k, v in original["se"].items()}, gold, specs)
                           for i in range(len(seeds))]}
    out["checks"]["gold_passes"] = all(c["success"] for c in out["checks"]["gold_seeds"])
    out["checks"]["original_fails"] = not any(c["success"] for c in out["checks"]["original_seeds"])
    forget = setting["forget_metric"]
    expect = "a > b" if next(s for s in specs if s["key"] == forget).get("higher_when_known", True) else "a < b"
    prefix = f"{name}_" if name else ""
    out["claims"] = [stats.claim(
        f"{prefix}original_knows_forget_set", f"the original model knows the forget data better than the gold model on "
        f"{forget} (there is something to unlearn)", forget, setting["original"], setting["gold"], original["values"][forget],
        gold["values"][forget], expect, paired=True,
        floor_se=float(np.mean(original["se"][forget])))]
    if setting.get("matched"):  # the approximate set stands in for the forget set: as hard for the gold model
      a, b = setting["matched"]
      floor = math.sqrt(float(np.mean(gold["se"][a])) ** 2 + float(np.mean(gold["se"][b])) ** 2)
      out["claims"].append(stats.claim(
          f"{prefix}gold_forget_differs_from_approximate", f"the gold model (which saw neither) finds the forget set easier "
          f"than the approximate set on {a} vs {b} (not resolved = matched within noise)", f"{a} - {b}",
          f"{setting['gold']}:{a}", f"{setting['gold']}:{b}", gold["values"][a], gold["values"][b],
          setting.get("matched_expect", "a < b"), paired=True, floor_se=floor))
  first = read_result(evaluate_dir, f"{setting['original']}_seed0")
  model = params_io.read_model_config(first["model"])
  gold_dir = context.stage_dirs(setting["gold"])[0] if setting.get("gold") else None
  retrain_flops = _run_flops(gold_dir, model, False) if gold_dir else float(setting.get("retrain_flops", 0) or 0)
  out["retrain_flops"] = retrain_flops
  for arm in setting["arms"]:
    arm = dict(arm)
    run_dir = context.stage_dir(arm["name"])
    config = _run_config(run_dir)
    per_epoch = int(config["checkpoint"]["every_steps"])
    points = []
    for step in params_io.complete_steps(paths.join(run_dir, "checkpoints")):
      values, ses = _values(read_result(evaluate_dir, f"{arm['name']}@{step}"), specs)
      point = {"step": step, "epoch": step / per_epoch, "values": values, "se": ses}
      if banded:
        point.update(band_test(values, ses, gold, specs))
      points.append(point)
    flops = _run_flops(run_dir, model, methods.get(arm["method"]).reference)
    out["arms"][arm["name"]] = {**arm, "steps": int(config["train"]["steps"]), "points": points,
                                "final": points[-1], "flops": flops,
                                "retrain_over_unlearn_flops": retrain_flops / flops if retrain_flops else None}
  for method in dict.fromkeys(a["method"] for a in setting["arms"]):
    arms = [a for a in out["arms"].values() if a["method"] == method]
    entry = {"label": methods.get(method).label, "lrs": sorted(a["lr"] for a in arms)}
    if banded:
      good = sorted(a["lr"] for a in arms if a["final"]["success"])
      best_arm, best = min(((a, p) for a in arms for p in a["points"]), key=lambda ap: ap[1]["distance"])
      entry.update({"robust_lrs": good, "robust_range": [good[0], good[-1]] if good else None,
                    "closest": {"lr": best_arm["lr"], "arm": best_arm["name"], "epoch": best["epoch"],
                                "step": best["step"], "distance": best["distance"], "success": best["success"],
                                "values": best["values"]}})
    out["methods"][method] = entry
  if banded:
    counts = {m: len(e["robust_lrs"]) for m, e in out["methods"].items()}
    top = max(counts.values(), default=0)
    out["most_robust"] = [m for m, c in counts.items() if top and c == top]
  return out


def build_results(args, context) -> dict:
  return {"settings": {name: setting_results(dict(setting), context, name)
                       for name, setting in dict(args.settings).items()},
          "k": K}


# ---------------------------------------------------------------- report.md


def _fmt(value: float, spec: dict) -> str:
  return f"{value:.3f}" if spec["kind"] in ("task", "mia", "bpb", "loss") else f"{value:.4g}"


def _cell(summary: dict, spec: dict) -> str:
  return stats.format_mean_se(summary[spec["key"]]["mean"], summary[spec["key"]]["se"])


def setting_markdown(name: str, r: dict) -> str:
  specs = r["metrics"]
  lines = [f"### Setting: {name}", "",
           f"Original and gold models ({r['seeds']} seed(s) each; mean ± standard error over seeds):", "",
           "| model | " + " | ".join(s["label"] for s in specs) + " |", "|---|" + "---|" * len(specs)]
  lines.append("| original | " + " | ".join(_cell(r["original"]["summary"], s) for s in specs) + " |")
  if "gold" in r:
    lines.append("| gold (without the forget data) | " + " | ".join(_cell(r["gold"]["summary"], s) for s in specs)
                 + " |")
  lines.append("")
  if "checks" in r:
    c = r["checks"]
    lines.append(f"Band test (k = {r['k']:g}): every gold seed within the band: {_yes(c['gold_passes'])}; "
                 f"every original seed outside it: {_yes(c['original_fails'])} (distances "
                 + ", ".join(f"{x['distance']:.1f}" for x in c["original_seeds"]) + " se).")
    for claim in r.get("claims", []):
      lines.append(f"Claim `{claim['id']}` ({claim['statement']}): {claim['a_mean']:.3f} vs {claim['b_mean']:.3f}, "
                   f"diff {claim['diff']:+.3f} ± {claim['se']:.3f} over {claim['n_seeds']} paired seeds: "
                   f"**{claim['verdict']}**.")
    lines.append("")
    lines += ["| method | learning rates | within the gold band after the last epoch | closest to gold (LR, "
              "epoch, distance in se) | " + " | ".join(f"closest: {s['label']}" for s in specs) + " |",
              "|---|---|---|---|" + "---|" * len(specs)]
    for m in r["methods"].values():
      best = m["closest"]
      lines.append(f"| {m['label']} | {', '.join(f'{x:g}' for x in m['lrs'])} | "
                   f"{', '.join(f'{x:g}' for x in m['robust_lrs']) or 'none'} | "
                   f"{best['lr']:g}, {best['epoch']:g}, {best['distance']:.1f}{' (within)' if best['success'] else ''}"
                   " | " + " | ".join(_fmt(best["values"][s["key"]], s) for s in specs) + " |")
    lines.append("")
    lines.append("Most robust (most learning rates within the band): "
                 + (", ".join(methods.get(m).label for m in r["most_robust"]) or "none") + ".")
    lines.append("")
  lines += ["Every run's final model:", "",
            "| method | LR | epochs | steps | " + " | ".join(s["label"] for s in specs) +
            " | distance (se) | retrain / unlearn FLOPs |", "|---|---|---|---|" + "---|" * (len(specs) + 2)]
  for a in r["arms"].values():
    final = a["final"]
    ratio = a["retrain_over_unlearn_flops"]
    cells = [_fmt(final["values"][s["key"]], s) + ("" if "within" not in final else
                                                   (" ✓" if final["within"][s["key"]] else "")) for s in specs]
    lines.append(f"| {methods.get(a['method']).label} | {a['lr']:g} | {a['epochs']:g} | {a['steps']} | "
                 + " | ".join(cells) + f" | {final.get('distance', float('nan')):.1f} | "
                 + (f"{ratio:.3g}" if ratio else "-") + " |")
  lines.append("")
  lines.append("✓: within the gold band on that metric.")
  return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
  return "\n".join(setting_markdown(name, r) for name, r in results["settings"].items())


def _yes(flag: bool) -> str:
  return "yes" if flag else "no"


# ---------------------------------------------------------------- plots


def plot(r: dict, path: str, title: str) -> None:
  """One panel per method: (forget metric, utility metric) after every epoch, one line per learning rate from
  the original model; the gold band as a box (mean ± k se on each axis)."""
  from yijax.analysis import plots
  from yijax.analysis.plots import figures as plt
  from matplotlib.patches import Rectangle

  x_key, y_key = r["forget_metric"], r["utility_metric"]
  labels = {s["key"]: s["label"] for s in r["metrics"]}
  methods_here = list(r["methods"])
  cols = min(4, len(methods_here))
  rows = -(-len(methods_here) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
  start = (r["original"]["summary"][x_key]["mean"], r["original"]["summary"][y_key]["mean"])
  for ax, method in zip(axes.flat, methods_here):
    for arm in (a for a in r["arms"].values() if a["method"] == method):
      xs = [start[0]] + [p["values"][x_key] for p in arm["points"]]
      ys = [start[1]] + [p["values"][y_key] for p in arm["points"]]
      ax.plot(xs, ys, marker="o", ms=3, label=f"LR {arm['lr']:g}")
    ax.scatter([start[0]], [start[1]], marker="*", s=120, color="black", zorder=5, label="original")
    if "gold" in r:
      g = r["gold"]["summary"]
      gx, gy = g[x_key]["mean"], g[y_key]["mean"]
      sx = K * math.sqrt(np.nanstd(r["gold"]["values"][x_key], ddof=1) ** 2 + np.mean(r["gold"]["se"][x_key]) ** 2)
      sy = K * math.sqrt(np.nanstd(r["gold"]["values"][y_key], ddof=1) ** 2 + np.mean(r["gold"]["se"][y_key]) ** 2)
      ax.add_patch(Rectangle((gx - sx, gy - sy), 2 * sx, 2 * sy, color="gold", alpha=0.35, label="gold band"))
      ax.scatter([gx], [gy], marker="P", s=100, color="darkgoldenrod", zorder=5, label="gold")
    ax.set_title(methods.get(method).label, fontsize=9)
    ax.set_xlabel(labels[x_key], fontsize=8)
    ax.set_ylabel(labels[y_key], fontsize=8)
  for ax in list(axes.flat)[len(methods_here):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=6)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  plots.save(fig, path, dpi=110)


def write_report(args, stage_dir: str, context) -> dict:
  """results.json, report.md and paths_<setting>.png in the study dir."""
  results = build_results(args, context)
  paths.write_text(paths.join(context.workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
  text = markdown(results)
  paths.write_text(paths.join(context.workdir, "report.md"), text)
  for name, r in results["settings"].items():
    plot(r, paths.join(context.workdir, f"paths_{name}.png"),
         f"{name}: each method's path over epochs from the original model (gold band shaded)")
  log.info(text)
  return {name: {"most_robust": r.get("most_robust"), "arms": len(r["arms"])}
          for name, r in results["settings"].items()}
