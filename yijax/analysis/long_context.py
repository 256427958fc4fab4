"""Long-context analysis over seeds: the needle score and the validation loss by context length of every
extension arm, the mixture each arm trained on, and the comparisons of Fu et al. (2024) as computed claims.

Metrics of one evaluated model (yijax/studies/long_context.py:evaluate_stage), with S the pretraining length
and L the target length:

  needle_short   mean needle score of the cells of length <= S (every key of every cell)
  needle_long    the same over the cells longer than S (retrieval beyond the pretraining length)
  loss_short     validation loss of the positions whose context is <= S tokens (held-out text)
  loss_mid       ... whose context is in (S, L/2]
  loss_long      ... whose context is in (L/2, L]

The needle claims take the binomial standard error of the score on its cell-key items as the least se (a
seed's score is itself a measurement on few items). The gate: the start model retrieves within its own
length (needle_short >= min_short_score); when it does not, the needle claims come from a setting where
retrieval could not appear, and the report says so next to them (the loss claims stand either way).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np

from yijax import paths
from yijax.analysis import plots, stats

log = logging.getLogger(__name__)

METRICS = ("needle_short", "needle_long", "loss_short", "loss_mid", "loss_long")


def _jsonl(location: str) -> list[dict]:
  if not paths.exists(location):
    return []
  return [json.loads(line) for line in paths.read_text(location).splitlines() if line.strip()]


def model_metrics(eval_dir: str, summary: dict, short: int, long: int) -> dict:
  """The five metrics of one evaluated model, and the needle's item counts."""
  records = _jsonl(paths.join(eval_dir, "needle.jsonl"))
  keys = max(len(summary["needle"]["keys"]), 1)
  inside = [r["score"] for r in records if r["length"] <= short]
  beyond = [r["score"] for r in records if r["length"] > short]
  loss = summary.get("loss", {}).get("by_length", {})
  return {"needle_short": float(np.mean(inside)) if inside else math.nan,
          "needle_long": float(np.mean(beyond)) if beyond else math.nan,
          "loss_short": loss.get(f"1-{short}", math.nan), "loss_mid": loss.get(f"{short + 1}-{long // 2}", math.nan),
          "loss_long": loss.get(f"{long // 2 + 1}-{long}", math.nan),
          "items_short": len(inside) * keys, "items_long": len(beyond) * keys}


def train_summary(run_dir: str) -> dict:
  records = _jsonl(paths.join(run_dir, "metrics.jsonl"))
  if not records:
    return {}
  tail = records[-max(1, len(records) // 10):]
  return {"steps": records[-1]["step"], "tokens": records[-1]["tokens_seen"],
          "loss_last": float(np.mean([r["loss"] for r in tail]))}


def mixture_summary(run, prepared: str, short: int) -> dict:
  """The run's resolved token shares per source (after length upsampling) and, per source, the share of its
  tokens in documents longer than the pretraining length."""
  import ml_collections

  from yijax.data import pipeline

  data = ml_collections.ConfigDict(run.data.to_dict())
  data.prepared_dir = prepared
  mixture = pipeline.train_mixture(data, int(run.train.seq_len), seed=0, process_index=0, process_count=1)
  long_share = {p.name: float(p.lengths[p.lengths > short].sum() / max(p.lengths.sum(), 1)) for p in mixture.plans}
  overall = sum(mixture.token_shares[name] * share for name, share in long_share.items())
  return {"shares": {k: float(v) for k, v in mixture.token_shares.items()}, "long_token_share": long_share,
          "long_token_share_overall": float(overall)}


def _upsampling(run) -> str:
  up = run.data.length_upsampling
  return "none" if up.mode == "none" else f"{up.mode} (> {up.threshold} kept, short p={up.keep_short_prob:g})"


def claims(arms: dict, before: dict, headline: tuple[str, str]) -> list[dict]:
  """The comparisons of Fu et al. that the arms present allow, paired seed by seed."""
  def values(arm, metric):
    return arms[arm]["per_seed"][metric]

  def needle_floor(a, b):
    items = min(arms[a]["items_long"], arms[b]["items_long"])
    p = float(np.mean(values(a, "needle_long") + values(b, "needle_long")))
    return stats.binomial_se(p, items) if items else 0.0

  def pair(a, b, metric):
    n = min(len(values(a, metric)), len(values(b, metric)))
    return values(a, metric)[:n], values(b, metric)[:n]

  found = []
  up, base = headline
  specs = [
      (f"{up}_vs_{base}_needle", f"{up} upsampling retrieves better beyond the pretraining length than the "
       f"{base} mixture", "needle_long", up, base, "a > b"),
      (f"{up}_vs_{base}_long_loss", f"{up} upsampling reaches a lower validation loss at long context "
       f"than the {base} mixture", "loss_long", up, base, "a < b"),
      (f"{up}_vs_global_short_loss", f"{up} upsampling keeps a lower short-context validation loss than global "
       "upsampling (which shifts the source shares)", "loss_short", up, "global", "a < b"),
      ("rope_vs_none_needle", "the RoPE base change retrieves better beyond the pretraining length (both "
       f"{up})", "needle_long", up, f"{up}_no_rope", "a > b"),
      ("rope_vs_none_long_loss", "the RoPE base change reaches a lower validation loss at long context (both "
       f"{up})", "loss_long", up, f"{up}_no_rope", "a < b"),
  ]
  for claim_id, statement, metric, a, b, expect in specs:
    if a not in arms or b not in arms:
      continue
    a_values, b_values = pair(a, b, metric)
    floor = needle_floor(a, b) if metric.startswith("needle") else 0.0
    found.append(stats.claim(claim_id, statement, metric, a, b, a_values, b_values, expect, floor_se=floor))
  if up in arms:
    found.append(stats.claim(
        "extension_long_loss", f"extension ({up}) lowers the validation loss at long context below the start "
        "model's", "loss_long", up, "before", values(up, "loss_long"), float(before["metrics"]["loss_long"]), "a < b"))
  return found


def _plot_loss(arms: dict, before: dict, labels: dict, location: str, short: int) -> None:
  figure, axes = plots.figures.subplots(figsize=(7, 4.5))
  ends = before["loss_curve_ends"]
  axes.plot(ends, before["loss_curve"], color="grey", linestyle="--", marker=".", label="before extension")
  for arm, entry in arms.items():
    curves = np.array(entry["loss_curves"])
    mean = curves.mean(axis=0)
    axes.plot(ends, mean, marker=".", label=f"{labels.get(arm, arm)} ({len(curves)} seeds)")
    if len(curves) > 1:
      se = curves.std(axis=0, ddof=1) / math.sqrt(len(curves))
      axes.fill_between(ends, mean - 2 * se, mean + 2 * se, alpha=0.2)
  axes.axvline(short, color="black", linewidth=0.8, linestyle=":")
  axes.set_xlabel("context length (tokens)")
  axes.set_ylabel("held-out loss (nats/token)")
  axes.set_title("Validation loss by context length (held-out text)")
  axes.legend(fontsize=7)
  figure.tight_layout()
  plots.save(figure, location)
  plots.figures.close(figure)


def _row(values: list[float], digits: int = 3) -> str:
  return stats.format_mean_se(*stats.mean_se(values), digits=digits)


def report(arms: dict, before: dict, labels: dict, data: dict, out_dir: str, short: int, long: int,
           min_short_score: float, headline: tuple, scale: str | None = None) -> dict:
  """arms: {arm: {"evals": [per-seed eval summaries], "eval_dirs", "runs": [run dirs], "config": run config}};
  before: {"eval", "eval_dir", "run", "config"}. Writes results.json, report.md and the PNGs into out_dir."""
  prepared = data.get("prepared", "")
  before_metrics = model_metrics(before["eval_dir"], before["eval"], short, long)
  before_entry = {"metrics": before_metrics, "rope_theta": before["eval"]["rope_theta"],
                  "loss_curve": before["eval"].get("loss", {}).get("curve", []),
                  "loss_curve_ends": before["eval"].get("loss", {}).get("curve_ends", []),
                  "train": train_summary(before["run"]), "seq_len": int(before["config"].train.seq_len)}
  if prepared:
    before_entry["mixture"] = mixture_summary(before["config"], prepared, short)
  results_arms = {}
  for arm, entry in arms.items():
    per_model = [model_metrics(d, s, short, long) for d, s in zip(entry["eval_dirs"], entry["evals"])]
    run = entry["config"]
    results_arms[arm] = {
        "label": labels.get(arm, arm), "seeds": len(per_model), "rope_theta": float(run.model.rope_theta),
        "upsampling": _upsampling(run), "seq_len": int(run.train.seq_len),
        "per_seed": {m: [p[m] for p in per_model] for m in METRICS},
        "metrics": stats.summarize({m: [p[m] for p in per_model] for m in METRICS}),
        "items_long": per_model[0]["items_long"], "items_short": per_model[0]["items_short"],
        "loss_curves": [s.get("loss", {}).get("curve", []) for s in entry["evals"]],
        "train": [train_summary(r) for r in entry["runs"]],
        "mixture": mixture_summary(run, prepared, short) if prepared else {}}
  found = claims(results_arms, before_entry, tuple(headline))
  gate = {"needle_short_before": before_metrics["needle_short"], "min_short_score": min_short_score,
          "passed": bool(before_metrics["needle_short"] >= min_short_score)}
  for claim in found:
    if claim["metric"].startswith("needle") and not gate["passed"]:
      claim["note"] = "the start model does not retrieve within its own length (gate): not a finding about retrieval"
  results = {"scale": scale, "short": short, "long": long, "gate": gate, "before": before_entry, "arms": results_arms,
             "claims": found, "data": {k: v for k, v in data.items() if k not in ("tokenizer", "prepared", "haystack",
                                                                                  "windows")}}
  paths.write_text(paths.join(out_dir, "results.json"), json.dumps(results, indent=2, sort_keys=True, default=float))
  lines = _markdown(results, labels)
  paths.write_text(paths.join(out_dir, "report.md"), "\n".join(lines) + "\n")
  if before_entry["loss_curve"]:
    _plot_loss(results_arms, before_entry, labels, paths.join(out_dir, "loss_by_length.png"), short)
  paths.copy_file(paths.join(before["eval_dir"], "needle.png"), paths.join(out_dir, "needle_before.png"))
  for arm, entry in arms.items():
    paths.copy_file(paths.join(entry["eval_dirs"][0], "needle.png"), paths.join(out_dir, f"needle_{arm}.png"))
  log.info("\n".join(lines))
  return results


def _markdown(results: dict, labels: dict) -> list[str]:
  short, long = results["short"], results["long"]
  b = results["before"]
  lines = [f"Extension {short} -> {long} tokens. Needle: the evaluation phrasing and held-out haystack (never in "
           f"training), score = fraction of cell x key items answered; loss: held-out text, nats/token, by context "
           "length. Mean ± standard error over seeds.", "",
           f"| model | rope_theta | data | seeds | needle <= {short} | needle > {short} | loss 1-{short} | "
           f"loss {short + 1}-{long // 2} | loss {long // 2 + 1}-{long} |", "|---|---|---|---|---|---|---|---|---|"]
  m = b["metrics"]
  lines.append(f"| before (pretrained at {b['seq_len']}) | {b['rope_theta']:g} | - | 1 | {m['needle_short']:.3f} | "
               f"{m['needle_long']:.3f} | {m['loss_short']:.3f} | {m['loss_mid']:.3f} | {m['loss_long']:.3f} |")
  for arm, entry in results["arms"].items():
    v = entry["per_seed"]
    lines.append(f"| {arm} | {entry['rope_theta']:g} | {entry['upsampling']} | {entry['seeds']} | "
                 + " | ".join(_row(v[metric]) for metric in METRICS) + " |")
  lines += ["", f"Gate: the start model's needle score within its own length is {results['gate']['needle_short_before']:.3f} "
            f"(needed >= {results['gate']['min_short_score']}): "
            + ("passed." if results["gate"]["passed"] else "failed, so the needle claims cannot show retrieval."), "",
            "| claim | metric | a | b | diff ± se | seeds | verdict |", "|---|---|---|---|---|---|---|"]
  for c in results["claims"]:
    lines.append(f"| `{c['id']}` | {c['metric']} | {c['a']} | {c['b']} | {stats.format_mean_se(c['diff'], c['se'])} | "
                 f"{c['n_seeds']} | {c['verdict']} |")
  lines += ["", "| run | passkey share | python_code share | python_docs share | tokens in documents > "
            f"{short} | steps | tokens | final train loss |", "|---|---|---|---|---|---|---|---|"]
  runs = [("pretrain", b.get("mixture", {}), [b["train"]])] + [(a, e["mixture"], e["train"])
                                                             for a, e in results["arms"].items()]
  for name, mixture, trains in runs:
    shares = mixture.get("shares", {})
    trains = [t for t in trains if t]
    steps = trains[0]["steps"] if trains else 0
    tokens = trains[0]["tokens"] if trains else 0
    loss = _row([t["loss_last"] for t in trains]) if trains else "-"
    lines.append(f"| {name} | {shares.get('passkey', 0):.3f} | {shares.get('python_code', 0):.3f} | "
                 f"{shares.get('python_docs', 0):.3f} | {mixture.get('long_token_share_overall', 0):.3f} | {steps} | "
                 f"{tokens:,} | {loss} |")
  lines += ["", "Arms: " + "; ".join(f"`{a}` {labels.get(a, a)}" for a in results["arms"]) + "."]
  return lines
