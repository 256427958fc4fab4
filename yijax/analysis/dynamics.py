"""Checkpoint-dynamics analysis (Yang et al., "The Fine Line", arXiv 2404.01204).

Input: the records of `yijax eval --run_dir` (eval/checkpoints.jsonl), one
list per model size. Every function here is plain numpy over those records:
  trajectories             (task, metric) -> ordered (step, tokens, flops, value)
  distance_matrix          distances between task trajectories, within vs across domains
  lagged_correlation       which of two curves moves first
  normalized               each curve over its final value (plots)
  gain_fraction            each curve as the fraction of its own gain (0 at the first checkpoint, 1 at the last)
  curve_distance           RMS distance between two gain-fraction curves over shared log tokens (compare sizes)
  tokens_to_leave_chance   first tokens at which a metric is 2 se above chance
  tokens_to_half_gain      first tokens at which half of the final gain is reached
  loss_decoupling          downstream metrics against validation loss, counting only changes beyond 2 se
and plots of each (matplotlib's Figure API; written to a local path or a gs:// URL).

Rank agreement (Spearman) between two curves that both rise says nothing (it is 1 for any two monotone
curves), so shapes are compared by distances between normalised curves, and timing by tokens to leave
chance and to reach half of the final gain; a curve whose gain is within 2 se of zero has no shape.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

# capability domain of each battery task (tasks given by path are their own domain)
DOMAINS = {
    "arith": "math", "facts": "knowledge", "induction": "in-context",
    "cloze_code": "code", "bpb_code": "code", "cloze_docs": "language", "bpb_docs": "language",
}
# metrics where lower is better (flipped so every trajectory rises with ability)
LOWER_IS_BETTER = ("bits_per_byte", "loss", "perplexity")


def domain_of(task: str) -> str:
  return DOMAINS.get(task, task)


def trajectories(records: Iterable[dict]) -> dict[tuple[str, str], np.ndarray]:
  """{(task, metric): array [checkpoints, 4] of (step, tokens, flops, value)} in training order."""
  out: dict[tuple[str, str], list] = {}
  for r in records:
    out.setdefault((r["task"], r["metric"]), []).append(
        (r.get("step") or 0, r.get("tokens_seen") or 0, r.get("flops") or 0, r["value"]))
  return {k: np.asarray(sorted(v), np.float64) for k, v in out.items()}


def ability(key: tuple[str, str], values: np.ndarray) -> np.ndarray:
  """Values oriented so that higher = better (bits per byte, loss flipped)."""
  return -values if key[1] in LOWER_IS_BETTER else values


def distance_matrix(trajs: dict[tuple[str, str], np.ndarray], keys: list | None = None,
                    se: dict | None = None):
  """(keys, matrix, summary): curve_distance between every pair of trajectories, and the mean distance of
  pairs within a capability domain and across domains (only curves that moved beyond 2 se take part;
  se: {key: se of one evaluation}). summary["static"] lists the curves that did not move."""
  keys = keys or sorted(trajs)
  se = se or {}
  n = len(keys)
  matrix = np.full((n, n), np.nan)
  for i, ki in enumerate(keys):
    for j, kj in enumerate(keys):
      d = curve_distance(trajs[ki], trajs[kj], se.get(ki, 0.0), se.get(kj, 0.0), key=None, keys=(ki, kj))
      matrix[i, j] = np.nan if d is None else d
  within, across = [], []
  for i in range(n):
    for j in range(i + 1, n):
      if not np.isnan(matrix[i, j]):
        (within if domain_of(keys[i][0]) == domain_of(keys[j][0]) else across).append(matrix[i, j])
  static = [f"{t}/{m}" for (t, m), row in zip(keys, matrix) if np.all(np.isnan(row))]
  summary = {"within": float(np.mean(within)) if within else None,
             "across": float(np.mean(across)) if across else None,
             "pairs_within": len(within), "pairs_across": len(across), "static": static}
  return keys, matrix, summary


def lagged_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 3) -> dict:
  """Pearson correlation of the step-to-step changes of a and b at lags -max..max.

  best_lag > 0: a's changes precede b's by that many checkpoints (a moves first)."""
  da, db = np.diff(np.asarray(a, float)), np.diff(np.asarray(b, float))
  scores = {}
  for lag in range(-max_lag, max_lag + 1):
    x, y = (da[:len(da) - lag], db[lag:]) if lag >= 0 else (da[-lag:], db[:len(db) + lag])
    if len(x) >= 3 and x.std() > 0 and y.std() > 0:
      scores[lag] = float(np.corrcoef(x, y)[0, 1])
  if not scores:
    return {"best_lag": 0, "correlation": float("nan"), "by_lag": {}}
  best = max(scores, key=lambda k: scores[k])
  return {"best_lag": best, "correlation": scores[best], "by_lag": scores}


def normalized(values: np.ndarray) -> np.ndarray:
  """A curve over its final value (for comparing shapes across model sizes)."""
  final = values[-1]
  return values / final if final not in (0, 0.0) and math.isfinite(final) else values


def gain_fraction(values: np.ndarray, se: float = 0.0) -> np.ndarray | None:
  """(v - v_first) / (v_last - v_first): 0 at the first checkpoint, 1 at the last. None when the gain is
  within 2 se of zero (se: of one evaluation; the gain is the difference of two, se * sqrt 2)."""
  values = np.asarray(values, np.float64)
  gain = values[-1] - values[0]
  if gain == 0 or abs(gain) < 2 * se * math.sqrt(2):
    return None
  return (values - values[0]) / gain


def curve_distance(a: np.ndarray, b: np.ndarray, se_a: float = 0.0, se_b: float = 0.0,
                   key=("", ""), keys=None) -> float | None:
  """RMS distance between two trajectories' gain-fraction curves ([checkpoints, 4] arrays, ability
  oriented by `key`, or by keys=(key_a, key_b) when they differ), interpolated onto 32 points of their
  shared log-tokens range. 0 = the same shape, about 0.3 = one rises early and one late; None when
  either curve did not move beyond 2 se or they share no token range."""
  key_a, key_b = keys if keys is not None else (key, key)
  ga, gb = gain_fraction(ability(key_a, a[:, 3]), se_a), gain_fraction(ability(key_b, b[:, 3]), se_b)
  if ga is None or gb is None:
    return None
  xa, xb = np.log(np.maximum(a[:, 1], 1)), np.log(np.maximum(b[:, 1], 1))
  low, high = max(xa.min(), xb.min()), min(xa.max(), xb.max())
  if not high > low:
    return None
  grid = np.linspace(low, high, 32)
  return float(np.sqrt(np.mean((np.interp(grid, xa, ga) - np.interp(grid, xb, gb)) ** 2)))


def tokens_to_leave_chance(traj: np.ndarray, chance: float, se: float, key=("", "")) -> float | None:
  """Tokens of the first checkpoint whose (ability-oriented) value is at least 2 se above chance; None if
  none is."""
  values = ability(key, traj[:, 3])
  above = np.nonzero(values >= chance + 2 * se)[0]
  return float(traj[above[0], 1]) if len(above) else None


def tokens_to_half_gain(traj: np.ndarray, se: float = 0.0, key=("", "")) -> float | None:
  """Tokens at which the curve first reaches half of its final gain over the first checkpoint (linear in
  log tokens between the two checkpoints around the crossing); None when the gain is within 2 se of 0."""
  fraction = gain_fraction(ability(key, traj[:, 3]), se)
  if fraction is None:
    return None
  index = int(np.nonzero(fraction >= 0.5)[0][0])
  if index == 0:
    return float(traj[0, 1])
  x0, x1 = np.log(max(traj[index - 1, 1], 1)), np.log(max(traj[index, 1], 1))
  f0, f1 = fraction[index - 1], fraction[index]
  return float(np.exp(x0 + (0.5 - f0) / (f1 - f0) * (x1 - x0)))


def loss_decoupling(loss_traj: np.ndarray, metric_traj: np.ndarray, key=("", ""), loss_se: float = 0.0,
                    metric_se: float = 0.0) -> dict:
  """Checkpoint-to-checkpoint steps where held-out loss and a downstream metric move in opposite
  directions, counted only where both changes exceed 2 se (loss_se, metric_se: of one evaluation, so a
  change has se * sqrt 2). A step where either barely moves is no evidence either way: it is counted
  in `steps_resolved` neither as agreeing nor disagreeing."""
  m = min(len(loss_traj), len(metric_traj))
  loss, metric = -loss_traj[:m, 3], ability(key, metric_traj[:m, 3])
  dl, dm = np.diff(loss), np.diff(metric)
  resolved = (np.abs(dl) >= 2 * loss_se * math.sqrt(2)) & (np.abs(dm) >= 2 * metric_se * math.sqrt(2))
  resolved &= (dl != 0) & (dm != 0)
  disagree = int(np.sum(resolved & ((dl > 0) != (dm > 0))))
  return {"steps_disagreeing": disagree, "steps_agreeing": int(np.sum(resolved)) - disagree,
          "steps_resolved": int(np.sum(resolved)), "steps": int(len(dl))}


def _plt():
  from yijax.analysis.plots import figures

  return figures


def _save(figure, location: str) -> None:
  from yijax.analysis import plots

  plots.save(figure, location, dpi=110)


def plot_curves(by_size: dict[str, dict], path: str, x: str = "tokens") -> None:
  """One panel per (task, metric): value against tokens or FLOPs, one line per model size."""
  plt = _plt()
  keys = sorted({k for trajs in by_size.values() for k in trajs})
  column = {"step": 0, "tokens": 1, "flops": 2}[x]
  cols = 3
  rows = max(1, math.ceil(len(keys) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    for size, trajs in by_size.items():
      if key in trajs:
        t = trajs[key]
        ax.plot(np.maximum(t[:, column], 1), t[:, 3], marker="o", ms=3, label=size)
    ax.set_xscale("log")
    ax.set_title(f"{key[0]} / {key[1]}", fontsize=9)
    ax.set_xlabel(x)
  for ax in axes.flat[len(keys):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def plot_matrix(keys: list, matrix: np.ndarray, path: str, title: str, vmax: float = 1.0) -> None:
  plt = _plt()
  labels = [f"{t}/{m}" for t, m in keys]
  fig, ax = plt.subplots(figsize=(max(4.0, 1 + 0.55 * len(keys)), max(3.5, 0.8 + 0.5 * len(keys))))
  image = ax.imshow(matrix, vmin=0, vmax=vmax, cmap="RdYlGn_r")
  ax.set_xticks(range(len(keys)), labels, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(len(keys)), labels, fontsize=8)
  for i in range(len(keys)):
    for j in range(len(keys)):
      if not np.isnan(matrix[i, j]):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6)
  fig.colorbar(image, ax=ax, fraction=0.046)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def plot_normalized(by_size: dict[str, dict], keys: list, path: str) -> None:
  plt = _plt()
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
  for ax, key in zip(axes[0], keys):
    for size, trajs in by_size.items():
      if key in trajs:
        t = trajs[key]
        ax.plot(t[:, 1] / max(t[-1, 1], 1), normalized(ability(key, t[:, 3])), marker="o", ms=3, label=size)
    ax.set_title(f"{key[0]}/{key[1]} (/ final)", fontsize=9)
    ax.set_xlabel("fraction of training tokens")
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)
