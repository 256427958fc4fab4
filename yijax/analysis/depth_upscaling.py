"""Depth up-scaling over paired seeds: the grown models against the source continued and against the grown
size trained from scratch, at matched tokens, as computed claims.

Seed i of every arm starts from source seed i. A continuation's curve starts at 0 tokens with the loss right
after growth (the `grow` stage's score of the same held-out batches) and goes on at the tokens it has seen.

  matched continuation tokens  per seed, the fewest tokens any continuation of that seed reached; every arm's
                               loss is read there (linear between evaluations)
  matched total tokens         per seed, the source's pretraining tokens plus the matched continuation tokens
                               (capped at the end of the scratch run): the 12-layer model from scratch is read
                               there, against the grown models at the same total
"""

from __future__ import annotations

import numpy as np

from yijax import paths
from yijax.analysis import growth, plots as plot_lib, stats

LABELS = {"yi_rule": "Yi's rule", "solar": "SOLAR's order", "source": "the source continued",
          "scratch_12l": "12 layers from scratch"}


def _mean_se(values) -> dict:
  mean, se = stats.mean_se(values)
  return {"mean": mean, "se": se, "values": [float(v) for v in values]}


def _at(curve: dict, tokens: float, start_loss: float | None = None) -> float:
  """The curve's loss at `tokens` (with its start point (0, start_loss) when given); its last loss beyond."""
  x, y = list(curve["tokens"]), list(curve["loss"])
  if start_loss is not None:
    x, y = [0.0] + x, [start_loss] + y
  value = growth.value_at(x, y, min(tokens, x[-1]))
  return float(y[0] if value is None else value)


def analyze(seeds: list[dict], grown: list[str], scratch: str) -> dict:
  """seeds: per seed {"cosine", "grow" (stage summaries), "pretrain_tokens", "continued": {arm: curve},
  "scratch": curve}. Returns the results dict (per-arm numbers over seeds, the block choice, claims)."""
  arms = list(seeds[0]["continued"])
  source_loss = [s["grow"]["source"]["loss"] for s in seeds]
  start = {arm: [s["grow"]["source" if arm == "source" else arm]["loss"] for s in seeds] for arm in arms}
  common = [min(s["continued"][arm]["tokens"][-1] for arm in arms) for s in seeds]
  at_common = {arm: [_at(s["continued"][arm], c, start[arm][i]) for i, (s, c) in enumerate(zip(seeds, common))]
               for arm in arms}
  total = [min(s["pretrain_tokens"] + c, s["scratch"]["tokens"][-1]) for s, c in zip(seeds, common)]
  at_total = {arm: [_at(s["continued"][arm], t - s["pretrain_tokens"], start[arm][i])
                    for i, (s, t) in enumerate(zip(seeds, total))] for arm in arms}
  scratch_at_total = [_at(s["scratch"], t) for s, t in zip(seeds, total)]
  out = {}
  for arm in arms:
    curves = [s["continued"][arm] for s in seeds]
    out[arm] = {"label": LABELS.get(arm, arm), "layers": curves[0]["layers"],
                "blocks": [s["grow"].get(arm, {}).get("block") for s in seeds],
                "loss_after_growth": _mean_se(start[arm]), "loss_at_common_tokens": _mean_se(at_common[arm]),
                "loss_at_total_tokens": _mean_se(at_total[arm]),
                "final_tokens": float(np.mean([c["tokens"][-1] for c in curves])),
                "final_loss": _mean_se([c["loss"][-1] for c in curves]),
                "final_bpb": _mean_se([c["bits_per_byte"][-1] for c in curves]),
                "batch_sizes": [c["batch_sizes"] for c in curves],
                "curves": [{"tokens": [0.0] + list(c["tokens"]), "loss": [start[arm][i]] + list(c["loss"])}
                           for i, c in enumerate(curves)]}
  scratch_curves = [s["scratch"] for s in seeds]
  out[scratch] = {"label": LABELS.get(scratch, scratch), "layers": scratch_curves[0]["layers"],
                  "loss_at_total_tokens": _mean_se(scratch_at_total),
                  "final_tokens": float(np.mean([c["tokens"][-1] for c in scratch_curves])),
                  "final_loss": _mean_se([c["loss"][-1] for c in scratch_curves]),
                  "final_bpb": _mean_se([c["bits_per_byte"][-1] for c in scratch_curves]),
                  "curves": [{"tokens": list(c["tokens"]), "loss": list(c["loss"])} for c in scratch_curves]}
  claims = []
  for arm in grown:
    claims.append(stats.claim(f"{arm}_beats_source", f"{LABELS[arm]} (12 layers) ends below the source continued "
                              "(8 layers) at matched continuation tokens", "held-out loss at matched continuation "
                              "tokens", arm, "source", at_common[arm], at_common["source"], "a < b"))
    claims.append(stats.claim(f"{arm}_beats_scratch_12l", f"{LABELS[arm]} ends below 12 layers trained from scratch "
                              "at matched total tokens (source pretraining + continuation)",
                              "held-out loss at matched total tokens", arm, scratch, at_total[arm], scratch_at_total,
                              "a < b"))
    claims.append(stats.claim(f"{arm}_growth_costs_loss", f"growth by {LABELS[arm]} raises the held-out loss "
                              "right after growth above the source's", "held-out loss right after growth", arm,
                              "source", start[arm], source_loss, "a > b"))
  if len(grown) >= 2:
    a, b = grown[:2]
    claims.append(stats.claim(f"{a}_beats_{b}", f"{LABELS[a]} ends below {LABELS[b]} at matched continuation tokens",
                              "held-out loss at matched continuation tokens", a, b, at_common[a], at_common[b], "a < b"))
  claims.append(stats.claim("source_still_improves", "the source continued as it is still lowers its held-out loss "
                            "(holds: the source was not saturated)", "held-out loss", "source", "source at growth",
                            at_common["source"], source_loss, "a < b"))
  cosine = [s["cosine"] for s in seeds]
  return {
      "seeds": len(seeds), "source_loss": _mean_se(source_loss),
      "source_bpb": _mean_se([s["grow"]["source"]["bits_per_byte"] for s in seeds]),
      "pretrain_tokens": float(np.mean([s["pretrain_tokens"] for s in seeds])),
      "common_tokens": [float(c) for c in common], "total_tokens": [float(t) for t in total],
      "plateau": [c.get("plateau") for c in cosine],
      "per_layer_cosine": [c["per_layer"] for c in cosine], "model_level_cosine": [c["model_level"] for c in cosine],
      "cosine_trend": [[[t["tokens"], t["model_level"]] for t in c["trend"]] for c in cosine],
      "candidates": cosine[0]["candidates"], "candidates_by_seed": [c["candidates"] for c in cosine],
      "yi_analogue": cosine[0]["yi_analogue"], "middle_block": cosine[0]["middle"],
      "rule_blocks": [c["blocks"].get("yi_rule") for c in cosine],
      "rule_picked_middle": [c["blocks"].get("yi_rule") == c["middle"] for c in cosine],
      "rule_picked_yi_analogue": [c["blocks"].get("yi_rule") == c["yi_analogue"] for c in cosine],
      "arms": out, "claims": claims,
  }


def _block(b, results) -> str:
  if not b:
    return "-"
  tags = [t for t, hit in (("middle", b == results["middle_block"]), ("Yi's position", b == results["yi_analogue"]))
          if hit]
  return f"{b[0]}..{b[1] - 1}" + (f" ({', '.join(tags)})" if tags else "")


def _number(value, digits: int = 4) -> str:
  return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def table(results) -> list[str]:
  fmt = stats.format_mean_se
  src = results["source_loss"]
  gates = [p for p in results["plateau"] if p]
  plateau = ("; held-out loss fell " + ", ".join(f"{100 * p['relative_improvement']:.2f}%" for p in gates)
             + f" (per seed) over the last {100 * gates[0]['window']:.0f}% of pretraining "
             f"(plateau tolerance {100 * gates[0]['tolerance']:.1f}%: "
             f"{'passed' if all(p['passed'] for p in gates) else 'NOT passed'})") if gates else ""
  cosine = np.mean([[c["mean_cosine"] for c in seed] for seed in results["candidates_by_seed"]], axis=0)
  candidates = ", ".join(f"{_block(c['block'], results)}: {m:.4f}" for c, m in zip(results["candidates"], cosine))
  lines = [f"Source (8 layers, {results['seeds']} seeds, {results['pretrain_tokens']:,.0f} pretraining tokens): "
           f"held-out loss {fmt(src['mean'], src['se'], 4)}{plateau}.",
           f"Candidate blocks (mean layer cosine, seed mean): {candidates}. Yi's rule picked "
           + ", ".join(_block(b, results) for b in results["rule_blocks"]) + " (per seed).", "",
           "| arm | layers | duplicated | loss right after growth | loss at matched continuation tokens | "
           "loss at matched total tokens | final loss | batch sizes (seed 0) |", "|---|---|---|---|---|---|---|---|"]
  for arm, a in results["arms"].items():
    after = a.get("loss_after_growth")
    common = a.get("loss_at_common_tokens")
    blocks = "from scratch" if "blocks" not in a else ", ".join(sorted({_block(b, results) for b in a["blocks"]}))
    sizes = " -> ".join(str(int(b)) for _, b in a["batch_sizes"][0]) if "batch_sizes" in a else "-"
    lines.append(f"| {arm} | {a['layers']} | {blocks} | {fmt(after['mean'], after['se'], 4) if after else '-'} | "
                 f"{fmt(common['mean'], common['se'], 4) if common else '-'} | "
                 f"{fmt(a['loss_at_total_tokens']['mean'], a['loss_at_total_tokens']['se'], 4)} | "
                 f"{fmt(a['final_loss']['mean'], a['final_loss']['se'], 4)} | {sizes} |")
  lines += ["", f"Matched continuation tokens (per seed): {', '.join(f'{t:,.0f}' for t in results['common_tokens'])}; "
            f"matched total tokens: {', '.join(f'{t:,.0f}' for t in results['total_tokens'])}.", "",
            "| claim | statement | diff | se | seeds | verdict |", "|---|---|---|---|---|---|"]
  for c in results["claims"]:
    lines.append(f"| `{c['id']}` | {c['statement']} | {_number(c['diff'])} | {_number(c['se'])} | {c['n_seeds']} | "
                 f"{c['verdict']} |")
  return lines


def plots(results, workdir) -> None:
  from yijax.analysis.plots import figures as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for seed, trend in enumerate(results["cosine_trend"]):
    points = [(t, v) for t, v in trend if v is not None]
    if points:
      left.plot(*zip(*points), marker="o", label=f"seed {seed}")
  left.set(xlabel="pretraining tokens", ylabel="model-level layer cosine", title="layer cosine over pretraining")
  left.legend(fontsize=7)
  per_layer = np.mean(results["per_layer_cosine"], axis=0)
  right.bar(range(len(per_layer)), per_layer)
  right.set(xlabel="layer", ylabel="mean cosine(input, output)", title="per layer, final checkpoint (seed mean)")
  fig.tight_layout()
  plot_lib.save(fig, paths.join(workdir, "layer_cosine.png"), dpi=100)
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
  offset = results["pretrain_tokens"]
  for arm, a in results["arms"].items():
    n = min(len(c["loss"]) for c in a["curves"])
    tokens = np.mean([c["tokens"][:n] for c in a["curves"]], axis=0)
    loss = np.mean([c["loss"][:n] for c in a["curves"]], axis=0)
    if "loss_after_growth" in a:
      left.plot(tokens, loss, marker=".", label=f"{arm} ({a['layers']}L)")
      right.plot(tokens + offset, loss, label=f"{arm} ({a['layers']}L)")
    else:
      right.plot(tokens, loss, color="black", label=f"{arm} ({a['layers']}L)")
  left.set(xlabel="tokens after growth", ylabel="held-out loss (seed mean)", title="continued pretraining")
  right.set(xlabel="total tokens", ylabel="held-out loss (seed mean)", title="against the grown size from scratch",
            ylim=(None, results["source_loss"]["mean"] * 1.15))
  left.legend(fontsize=7)
  right.legend(fontsize=7)
  fig.tight_layout()
  plot_lib.save(fig, paths.join(workdir, "loss_vs_tokens.png"), dpi=100)
