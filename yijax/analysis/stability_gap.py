"""Stability-gap analysis over seeds: curves of QA accuracy and domain loss against tokens, the dip against the
start band, recovery, peak, and each strategy against the baseline at matched tokens, as computed claims.

A run's curve is its start model's evaluation (step 0, tokens 0: the `start_eval` stage) followed by its
eval.jsonl rows, placed at the tokens seen (metrics.jsonl, real tokens: padding excluded) at each step. An
arm's curves are its seeds' curves on their common evaluation steps: [seeds, evaluations].

For an accuracy (higher is better) of an arm:

  start     the start model's accuracy; its band is the binomial standard error on the task's N items
  dip       the lowest point of the seed-mean curve after the start: depth = start - worst, with
            se = sqrt(se_start^2 + se_worst^2 + se_seeds(worst)^2) (item noise of both points and the
            seeds' spread at the worst; a single seed leaves the seed spread unknown: "not resolved")
  recovery  the tokens at the first evaluation after the dip whose seed mean is back at the start (None:
            never within the run)
  peak      the highest point of the seed-mean curve and its tokens; final = the last evaluation

Guo et al. (2024) call the early drop and later recovery of domain task accuracy, while domain perplexity
falls from the first step, the stability gap. A strategy is compared with the baseline seed by seed at the
strategy's final tokens (the baseline's curve interpolated there): matched tokens.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np

from yijax import paths
from yijax.analysis import stats

log = logging.getLogger(__name__)

ACCURACIES = ("b_known_qa", "b_unknown_qa", "a_held_out_qa")  # a_trained_qa gates the start model only
TITLES = {"b_known_qa": "world B, known half: QA accuracy (the domain task the start model can do)",
          "b_unknown_qa": "world B, unknown half: QA accuracy (learnable only from the domain corpus)",
          "a_held_out_qa": "world A, held-out people: QA accuracy (general)",
          "a_trained_qa": "world A, trained QA: accuracy", "domain_loss": "held-out domain loss (nats/token)"}


def _jsonl(location: str) -> list[dict]:
  if not paths.exists(location):
    return []
  return [json.loads(line) for line in paths.read_text(location).splitlines() if line.strip()]


def load_curve(run_dir: str, base: dict) -> dict[str, np.ndarray]:
  """{"step", "tokens", metric...} arrays: the start evaluation, then every evaluation of the run."""
  tokens_at = {r["step"]: r.get("tokens_seen", 0) for r in _jsonl(paths.join(run_dir, "metrics.jsonl"))}
  rows = [dict(base, step=0)] + _jsonl(paths.join(run_dir, "eval.jsonl"))
  keys = sorted({k for r in rows for k in r if k not in ("step", "tokens")})  # eval "tokens" = held-out count
  curve = {"step": np.array([r["step"] for r in rows]),
           "tokens": np.array([0 if r["step"] == 0 else tokens_at.get(r["step"], np.nan) for r in rows], float)}
  for key in keys:
    curve[key] = np.array([float(r.get(key, np.nan)) for r in rows])
  return curve


def stack(curves: list[dict]) -> dict[str, np.ndarray]:
  """Seeds' curves on the evaluation steps they all have: {"step": [E], "tokens" and metrics: [seeds, E]}."""
  common = sorted(set.intersection(*(set(c["step"].tolist()) for c in curves)))
  out = {"step": np.array(common)}
  for key in set.intersection(*(set(c) for c in curves)) - {"step"}:
    out[key] = np.stack([c[key][np.searchsorted(c["step"], common)] for c in curves])
  return out


def accuracy_summary(tokens: np.ndarray, values: np.ndarray, items: int) -> dict:
  """The seed-mean curve's dip against the start band, recovery, peak and final, each with its se."""
  mean_tokens, mean = np.nanmean(tokens, axis=0), np.nanmean(values, axis=0)
  seeds = values.shape[0]
  spread = np.nanstd(values, axis=0, ddof=1) / math.sqrt(seeds) if seeds > 1 else np.full(mean.shape, math.nan)
  start = float(mean[0])
  start_se = stats.binomial_se(start, items)
  worst = 1 + int(np.argmin(mean[1:]))
  depth = start - float(mean[worst])
  se = math.sqrt(start_se**2 + stats.binomial_se(float(mean[worst]), items)**2 + spread[worst]**2)
  recovery = None
  later = np.nonzero(mean[worst + 1:] >= start)[0]
  if len(later):
    recovery = float(mean_tokens[worst + 1 + later[0]])
  peak = int(np.argmax(mean))
  peak_se = math.sqrt(start_se**2 + stats.binomial_se(float(mean[peak]), items)**2 + spread[peak]**2)
  final_mean, final_se = stats.mean_se(values[:, -1])
  return {
      "start": start, "start_se": start_se, "items": items, "seeds": seeds,
      "dip": {"value": float(mean[worst]), "tokens": float(mean_tokens[worst]), "depth": depth, "se": se,
              "verdict": stats.verdict(depth, se, 1), "evaluation": worst},
      "recovery_tokens": recovery if depth > 0 else 0.0,
      "peak": {"value": float(mean[peak]), "tokens": float(mean_tokens[peak]), "gain": float(mean[peak]) - start,
               "se": peak_se, "verdict": stats.verdict(float(mean[peak]) - start, peak_se, 1)},
      "final": {"mean": final_mean, "se": final_se, "values": values[:, -1].tolist()},
  }


def at_tokens(tokens: np.ndarray, values: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Each seed's curve read at target[seed] tokens (linear between evaluations)."""
  out = []
  for seed in range(values.shape[0]):
    ok = ~np.isnan(values[seed]) & ~np.isnan(tokens[seed])
    out.append(float(np.interp(target[seed], tokens[seed][ok], values[seed][ok])))
  return np.array(out)


def matched_claims(arm: str, curves: dict, baseline: dict, keys: dict, items: dict) -> list[dict]:
  """The strategy against the baseline at the strategy's final tokens, seed by seed: QA accuracies higher, the
  domain loss lower, and the worst known-half accuracy over that window higher (a shallower dip)."""
  claims = []
  seeds = min(curves["tokens"].shape[0], baseline["tokens"].shape[0])
  end = curves["tokens"][:seeds, -1]
  for label in ("b_known_qa", "b_unknown_qa", "a_held_out_qa", "domain_loss"):
    key = keys.get(label)
    if key not in curves or key not in baseline:
      continue
    mine = curves[key][:seeds, -1]
    theirs = at_tokens(baseline["tokens"][:seeds], baseline[key][:seeds], end)
    accuracy = label != "domain_loss"
    floor = stats.binomial_se(float(np.mean([mine.mean(), theirs.mean()])), items[label]) if accuracy else 0.0
    claims.append(stats.claim(
        f"{arm}_{label}_vs_baseline",
        f"{arm} {'reaches a higher' if accuracy else 'reaches a lower'} {label} than the baseline at matched tokens",
        label, arm, "baseline", mine.tolist(), theirs.tolist(), "a > b" if accuracy else "a < b", floor_se=floor))
  key = keys.get("b_known_qa")
  if key in curves and key in baseline:
    mine = np.nanmin(curves[key][:seeds, 1:], axis=1)
    window = [baseline[key][s, 1:][baseline["tokens"][s, 1:] <= end[s] * 1.001] for s in range(seeds)]
    theirs = np.array([np.nanmin(w) if len(w) else np.nan for w in window])
    floor = stats.binomial_se(float(np.mean([mine.mean(), theirs.mean()])), items["b_known_qa"])
    claims.append(stats.claim(
        f"{arm}_dip_shallower", f"{arm}'s worst known-half accuracy is above the baseline's over the same tokens",
        "worst b_known_qa", arm, "baseline", mine.tolist(), theirs.tolist(), "a > b", floor_se=floor))
  return claims


def summarize_arm(curves: dict, keys: dict, items: dict, domain_tokens: float | None) -> dict:
  out = {"seeds": int(curves["tokens"].shape[0]), "evaluations": int(len(curves["step"]) - 1)}
  final_tokens = curves["tokens"][:, -1]
  out["tokens"] = float(np.mean(final_tokens))
  if domain_tokens:
    out["domain_epochs"] = float(np.mean(final_tokens) / domain_tokens)
  for label in ACCURACIES:
    if keys.get(label) in curves:
      out[label] = accuracy_summary(curves["tokens"], curves[keys[label]], items[label])
  key = keys.get("domain_loss")
  if key in curves:
    values = curves[key]
    out["domain_loss"] = {"start": float(values[0, 0]), "first_eval": stats.mean_se(values[:, 1])[0],
                          "final": dict(zip(("mean", "se"), stats.mean_se(values[:, -1])))}
  key = keys.get("update_ratio")
  if key in curves and not np.isnan(curves[key][:, 1:]).all():
    # early: each seed's mean over the evaluations in the first 10% of its tokens (the gap's window; the
    # paper reads a ratio above 1.35 there), final: the last evaluation
    tokens, values = curves["tokens"], curves[key]
    early = []
    for s in range(len(values)):
      finite = ~np.isnan(values[s, 1:])  # 0/0 at an evaluation before the first update
      window = finite & (tokens[s, 1:] <= 0.1 * tokens[s, -1])
      if not window.any():  # at least the first evaluation with an update
        window = finite & (np.cumsum(finite) == 1)
      early.append(float(np.mean(values[s, 1:][window])) if window.any() else np.nan)
    early = np.array(early)
    final = values[:, -1]
    out["update_ratio"] = {"early": dict(zip(("mean", "se"), stats.mean_se(early)), values=early.tolist()),
                           "final": dict(zip(("mean", "se"), stats.mean_se(final)), values=final.tolist())}
  return out


def claims_for(results: dict, stacked: dict, keys: dict, items: dict, baseline: str | None,
               strategies: list[str]) -> list[dict]:
  out = []
  for arm, r in results.items():
    for label in ("b_known_qa", "a_held_out_qa"):
      if label in r:
        d = r[label]["dip"]
        out.append({"id": f"{arm}_{label}_dip", "statement": f"{arm}: {label} falls below the start model's band",
                    "metric": label, "a": "start", "b": arm, "expect": "a > b", "a_mean": r[label]["start"],
                    "b_mean": d["value"], "diff": d["depth"], "se": d["se"], "n_seeds": r["seeds"],
                    "paired": False, "verdict": d["verdict"] if r["seeds"] > 1 else stats.NOT_RESOLVED})
    if "b_known_qa" in r:
      p = r["b_known_qa"]["peak"]
      out.append({"id": f"{arm}_b_known_qa_peak", "statement": f"{arm}: b_known_qa rises above the start model's band",
                  "metric": "b_known_qa", "a": arm, "b": "start", "expect": "a > b", "a_mean": p["value"],
                  "b_mean": r["b_known_qa"]["start"], "diff": p["gain"], "se": p["se"], "n_seeds": r["seeds"],
                  "paired": False, "verdict": p["verdict"] if r["seeds"] > 1 else stats.NOT_RESOLVED})
  if baseline in stacked:
    for arm in strategies:
      if arm in stacked:
        out.extend(matched_claims(arm, stacked[arm], stacked[baseline], keys, items))
    if "no_shift" in results and "update_ratio" in results.get(baseline, {}) and "update_ratio" in results["no_shift"]:
      out.append(stats.claim(
          "shift_moves_bottom_layers", "early in the run (first 10% of tokens) the domain shift raises the "
          "bottom/top relative update above continued pretraining without a shift (same tokens and schedule)",
          "relative_update/bottom_over_top", baseline, "no_shift",
          results[baseline]["update_ratio"]["early"]["values"], results["no_shift"]["update_ratio"]["early"]["values"],
          "a > b"))
  return out


def _fmt(value, digits: int = 3) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _mtok(tokens) -> str:
  if tokens is None:
    return "never"
  return f"{tokens / 1e6:.2f}M" if tokens >= 1e5 else f"{tokens / 1e3:.1f}K"


def _ms(d: dict, digits: int = 3) -> str:
  return stats.format_mean_se(d["mean"], d["se"], digits)


def table(results: dict, labels: dict) -> list[str]:
  """The arms table: the known half's dip, recovery and peak, and the other groups' start -> final."""
  lines = ["| arm | seeds | tokens (domain epochs) | B known: start | worst (at) | recovered at | "
           "peak (at) | final | B unknown: start -> final | A held-out: start -> final | domain loss: start -> "
           "final | bottom/top update: early -> final |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for arm, r in results.items():
    k, u, a = r.get("b_known_qa"), r.get("b_unknown_qa"), r.get("a_held_out_qa")
    loss, ratio = r.get("domain_loss"), r.get("update_ratio")
    epochs = f" ({r['domain_epochs']:.2f})" if "domain_epochs" in r else ""
    cells = [arm, str(r["seeds"]), _mtok(r["tokens"]) + epochs]
    if k:
      cells += [f"{k['start']:.3f} ± {k['start_se']:.3f}", f"{k['dip']['value']:.3f} ({_mtok(k['dip']['tokens'])})",
                _mtok(k["recovery_tokens"]) if k["dip"]["depth"] > 0 else "no dip",
                f"{k['peak']['value']:.3f} ({_mtok(k['peak']['tokens'])})", _ms(k["final"])]
    else:
      cells += ["-"] * 5
    cells += [f"{g['start']:.3f} -> {_ms(g['final'])}" if g else "-" for g in (u, a)]
    cells.append(f"{loss['start']:.3f} -> {_ms(loss['final'])}" if loss else "-")
    cells.append(f"{_ms(ratio['early'], 2)} -> {_ms(ratio['final'], 2)}" if ratio else "-")
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def claims_table(claims: list[dict]) -> list[str]:
  lines = ["| claim | statement | a - b | se | seeds | verdict |", "|---|---|---|---|---|---|"]
  for c in claims:
    lines.append(f"| `{c['id']}` | {c['statement']} | {c['diff']:+.4f} | {_fmt(c['se'], 4)} | {c['n_seeds']} | "
                 f"{c['verdict']} |")
  return lines


def plot(stacked: dict, keys: dict, out_dir: str) -> list[str]:
  """curves.png (the QA groups and the domain loss against tokens, seed mean with a ±se band) and
  relative_update.png."""
  from yijax.analysis import plots

  panels = ["b_known_qa", "b_unknown_qa", "a_held_out_qa", "domain_loss"]
  fig, axes = plots.figures.subplots(1, 4, figsize=(24, 5))
  for ax, label in zip(axes, panels):
    key = keys.get(label)
    for index, (arm, curves) in enumerate(stacked.items()):
      if key not in curves:
        continue
      tokens, values = np.nanmean(curves["tokens"], axis=0), curves[key]
      mean = np.nanmean(values, axis=0)
      ax.plot(tokens, mean, label=arm, lw=1.2, color=f"C{index % 10}", marker=".", ms=3)
      if values.shape[0] > 1:
        se = np.nanstd(values, axis=0, ddof=1) / math.sqrt(values.shape[0])
        ax.fill_between(tokens, mean - se, mean + se, color=f"C{index % 10}", alpha=0.15)
    ax.set_xscale("symlog", linthresh=1e4)
    ax.set_title(TITLES[label], fontsize=9)
    ax.set_xlabel("tokens")
    if label != "domain_loss":
      ax.axhline(0.25, ls=":", color="gray", lw=0.8)
  axes[0].legend(fontsize=7)
  fig.suptitle("stability gap: seed means ± se against tokens (symlog); dotted: chance (4 choices)")
  fig.tight_layout()
  out = [paths.join(out_dir, "curves.png")]
  plots.save(fig, out[0], dpi=100)
  key = keys.get("update_ratio")
  fig, ax = plots.figures.subplots(figsize=(7, 4.5))
  for index, (arm, curves) in enumerate(stacked.items()):
    if key in curves:
      tokens, mean = np.nanmean(curves["tokens"], axis=0), np.nanmean(curves[key], axis=0)
      ax.plot(tokens[1:], mean[1:], label=arm, lw=1.2, color=f"C{index % 10}")
  ax.axhline(1.0, ls="--", color="gray", lw=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("tokens")
  ax.set_ylabel("bottom-k / top-k relative update")
  ax.set_title("||W_t - W_0|| / ||W_0||: bottom layers over top layers (seed mean)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  out.append(paths.join(out_dir, "relative_update.png"))
  plots.save(fig, out[1], dpi=100)
  return out


def report(arms: dict[str, list[str]], base: dict, keys: dict, items: dict, out_dir: str,
           labels: dict | None = None, extra: dict | None = None, baseline: str | None = "baseline",
           strategies: list[str] = (), subset_fraction: float = 0.1) -> dict:
  """Writes OUT/results.json, OUT/report.md and the PNGs for {arm: [run dir per seed]}; returns the results."""
  extra = extra or {}
  domain_tokens = extra.get("domain_tokens")
  stacked = {arm: stack([load_curve(d, base) for d in dirs]) for arm, dirs in arms.items()}
  results = {}
  for arm, curves in stacked.items():
    domain_only = arm not in ("hq_mixture", "no_shift", "replay10", "hq", "subset")
    results[arm] = summarize_arm(curves, keys, items, domain_tokens if domain_only else None)
    if arm == "hq" and extra.get("domain_hq_tokens"):
      results[arm]["domain_epochs"] = results[arm]["tokens"] / extra["domain_hq_tokens"]
    if arm == "subset" and domain_tokens:
      results[arm]["domain_epochs"] = results[arm]["tokens"] / (subset_fraction * domain_tokens)
  claims = claims_for(results, stacked, keys, items, baseline, list(strategies))
  figures = plot(stacked, keys, out_dir)
  payload = {"arms": results, "claims": claims, "base": base, "keys": keys, "items": items, "labels": labels or {},
             **extra}
  gate = extra.get("gate")
  lines = []
  if gate is not None and not gate.get("passed"):
    lines += ["**The start model failed the gate** (gate.json): no dip could appear, so no null below means "
              "anything.", ""]
  lines += ["Mean ± standard error over seeds; accuracies on 4-choice QA (chance 0.25); tokens are real "
            "(padding excluded); domain epochs = tokens / the arm's domain tokens (subset: its share of the domain, "
            "hq: domain_hq).", ""]
  lines += table(results, labels or {}) + [""]
  lines += [f"- `{arm}`: {label}" for arm, label in (labels or {}).items()] + [""]
  lines += claims_table(claims) + [""]
  lines += [f"![{paths.basename(p)}]({paths.basename(p)})" for p in figures]
  paths.write_text(paths.join(out_dir, "results.json"),
                   json.dumps(payload, indent=2, sort_keys=True, default=float))
  paths.write_text(paths.join(out_dir, "report.md"), "\n".join(lines) + "\n")
  log.info("\n".join(lines))
  return payload
