"""Stability-gap analysis: curves of task accuracy and domain loss against tokens, the dip, recovery and peak.

A run's curve is its start model's evaluation (step 0, tokens 0: the
`evaluate_base` stage) followed by its eval.jsonl rows, placed at the tokens
seen (metrics.jsonl) at each step. For an accuracy curve:

  start      the value at tokens 0
  dip        the lowest value before the peak (after the start); depth = start - dip (0 when it never
             fell below the start)
  recovery   the tokens at the first evaluation after the dip at or above the start (None if never)
  peak       the highest value and its tokens; final = the last value
  gap        depth > 2 binomial standard errors of the start (sqrt(p (1 - p) / items)): a dip larger
             than item-sampling noise

Guo et al. (2024) call the early drop and later recovery of medical task
accuracy, while medical perplexity falls from the first step, the stability
gap.
"""

from __future__ import annotations

import logging
import json
import math
import os

import numpy as np

log = logging.getLogger(__name__)


def _jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def load_curve(run_dir: str, base: dict) -> dict[str, np.ndarray]:
  """{"step", "tokens", metric...} arrays: the start evaluation, then every evaluation of the run."""
  tokens_at = {r["step"]: r.get("tokens_seen", 0) for r in _jsonl(os.path.join(run_dir, "metrics.jsonl"))}
  rows = [dict(base, step=0)] + _jsonl(os.path.join(run_dir, "eval.jsonl"))
  keys = sorted({k for r in rows for k in r if k not in ("step", "tokens")})  # eval "tokens" = held-out count
  curve = {"step": np.array([r["step"] for r in rows]),
           "tokens": np.array([0 if r["step"] == 0 else tokens_at.get(r["step"], np.nan) for r in rows], float)}
  for key in keys:
    curve[key] = np.array([float(r.get(key, np.nan)) for r in rows])
  return curve


def gap_metrics(tokens: np.ndarray, values: np.ndarray, items: int | None = None) -> dict:
  """start, dip (depth, value, tokens), recovery tokens, peak (value, tokens), final of an accuracy curve."""
  ok = ~np.isnan(values)
  tokens, values = np.asarray(tokens)[ok], np.asarray(values)[ok]
  if len(values) < 2:
    return {"start": float(values[0]) if len(values) else None, "points": int(len(values))}
  start = float(values[0])
  peak_index = int(np.argmax(values))
  before = values[1:peak_index] if peak_index > 1 else values[1:]
  dip_index = 1 + int(np.argmin(before)) if len(before) else 1
  depth = max(start - float(values[dip_index]), 0.0)
  recovery = None
  if depth == 0.0:
    recovery = 0.0
  else:
    later = np.nonzero(values[dip_index + 1:] >= start)[0]
    if len(later):
      recovery = float(tokens[dip_index + 1 + later[0]])
  out = {"start": start, "dip": float(values[dip_index]), "dip_depth": depth,
         "dip_tokens": float(tokens[dip_index]) if depth > 0 else None, "recovery_tokens": recovery,
         "peak": float(values[peak_index]), "peak_tokens": float(tokens[peak_index]), "final": float(values[-1]),
         "points": int(len(values))}
  if items:
    se = math.sqrt(max(start * (1 - start), 1e-12) / items)
    out.update(start_se=se, gap=bool(depth > 2 * se))
  return out


def summarize_arm(curve: dict, keys: dict, items: dict) -> dict:
  """The numbers of one arm: gap metrics of the accuracies, start/final of the losses, the update ratio."""
  out = {"tokens": float(np.nanmax(curve["tokens"])), "evaluations": int(len(curve["step"]) - 1)}
  for label in ("domain_acc", "general_acc"):
    if keys.get(label) in curve:
      out[label] = gap_metrics(curve["tokens"], curve[keys[label]], items.get(label))
  for label in ("domain_loss", "general_bpb"):
    key = keys.get(label)
    if key in curve:
      values = curve[key][~np.isnan(curve[key])]
      out[label] = {"start": float(values[0]), "first_eval": float(values[1]) if len(values) > 1 else None,
                    "min": float(values.min()), "final": float(values[-1])}
  ratio = keys.get("update_ratio")
  if ratio in curve:
    values = curve[ratio][1:]
    values = values[~np.isnan(values)]
    if len(values):
      out["update_ratio"] = {"first": float(values[0]), "final": float(values[-1]), "mean": float(values.mean()),
                             "share_above_1": float(np.mean(values > 1.0))}
  return out


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, float) and math.isnan(value):
    return "-"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _mtok(tokens) -> str:
  if tokens is None:
    return "never"
  return f"{tokens / 1e6:.2f}M" if tokens >= 1e5 else f"{tokens / 1e3:.1f}K"


def table(results: dict, labels: dict) -> list[str]:
  """The markdown table (a row per arm), like the paper's Table 1 plus the gap columns."""
  lines = ["| arm | recipe | tokens | domain acc start | dip (depth) | recovered at | peak (at) | final | "
           "general acc start -> final | domain loss start -> first eval -> final | bottom/top update |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for arm, r in results.items():
    d, g, loss, u = r.get("domain_acc", {}), r.get("general_acc", {}), r.get("domain_loss", {}), r.get("update_ratio", {})
    gap = " **gap**" if d.get("gap") else ""
    lines.append(
        f"| {arm} | {labels.get(arm, '')} | {_mtok(r['tokens'])} | {_fmt(d.get('start'))} | "
        f"{_fmt(d.get('dip'))} ({_fmt(d.get('dip_depth'))}){gap} | "
        f"{_mtok(d.get('recovery_tokens')) if d.get('dip_depth') else 'no dip'} | "
        f"{_fmt(d.get('peak'))} ({_mtok(d.get('peak_tokens'))}) | {_fmt(d.get('final'))} | "
        f"{_fmt(g.get('start'))} -> {_fmt(g.get('final'))} | "
        f"{_fmt(loss.get('start'))} -> {_fmt(loss.get('first_eval'))} -> {_fmt(loss.get('final'))} | "
        f"{_fmt(u.get('first'), 2)} -> {_fmt(u.get('final'), 2)} |")
  return lines


def plot(curves: dict, keys: dict, results: dict, out_dir: str) -> list[str]:
  """curves.png (domain acc, general acc, domain loss against tokens; dips marked) and relative_update.png."""
  from yijax.analysis.plots import figures as plt

  panels = [("domain_acc", "domain task accuracy (world-B QA)"), ("general_acc", "general accuracy (held-out world-A QA)"),
            ("domain_loss", "held-out domain loss (nats/token)")]
  fig, axes = plt.subplots(1, 3, figsize=(18, 5))
  for ax, (label, title) in zip(axes, panels):
    for index, (arm, curve) in enumerate(curves.items()):
      key = keys.get(label)
      if key not in curve:
        continue
      ok = ~np.isnan(curve[key])
      line, = ax.plot(curve["tokens"][ok] / 1e6, curve[key][ok], label=arm, lw=1.2, color=f"C{index % 10}")
      metrics = results[arm].get(label, {})
      if metrics.get("dip_depth"):
        ax.plot(metrics["dip_tokens"] / 1e6, metrics["dip"], "v", color=line.get_color(), ms=8)
    if label != "domain_loss":
      starts = [c[keys[label]][0] for c in curves.values() if keys.get(label) in c]
      if starts:
        ax.axhline(starts[0], ls="--", color="gray", lw=0.8)
    ax.set_title(title)
    ax.set_xlabel("tokens (M)")
  axes[0].legend(fontsize=7)
  fig.suptitle("stability gap: triangles mark each arm's dip; the dashed line is the start model")
  fig.tight_layout()
  paths = [os.path.join(out_dir, "curves.png")]
  fig.savefig(paths[0], dpi=110)
  plt.close(fig)
  key = keys.get("update_ratio")
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for index, (arm, curve) in enumerate(curves.items()):
    if key in curve:
      ok = ~np.isnan(curve[key])
      ax.plot(curve["tokens"][ok] / 1e6, curve[key][ok], label=arm, lw=1.2, color=f"C{index % 10}")
  ax.axhline(1.0, ls="--", color="gray", lw=0.8)
  ax.set_xlabel("tokens (M)")
  ax.set_ylabel("bottom-k / top-k relative update")
  ax.set_title("||W_t - W_0|| / ||W_0||: bottom layers over top layers")
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "relative_update.png"))
  fig.savefig(paths[1], dpi=110)
  plt.close(fig)
  return paths


def report(arms: dict, base: dict, keys: dict, items: dict, out_dir: str, labels: dict | None = None,
           extra: dict | None = None) -> dict:
  """Writes OUT/results.json, OUT/report.md and the PNGs for {arm: run dir}; returns the results."""
  curves = {arm: load_curve(run_dir, base) for arm, run_dir in arms.items()}
  results = {arm: summarize_arm(curve, keys, items) for arm, curve in curves.items()}
  lines = table(results, labels or {})
  paths = plot(curves, keys, results, out_dir)
  payload = {"arms": results, "base": base, "keys": keys, "items": items, **(extra or {})}
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=float)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in paths)
            + "\n")
  log.info("\n".join(lines))
  return payload
