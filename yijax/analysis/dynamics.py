"""Checkpoint-dynamics analysis (Yang et al., "The Fine Line", arXiv 2404.01204).

Input: the records of `yijax eval --run_dir` (eval/checkpoints.jsonl), one
list per model size. Every function here is plain numpy over those records:
  trajectories             (task, metric) -> ordered (step, tokens, flops, value)
  spearman_matrix          rank correlation of task trajectories, within vs across domains
  lagged_correlation       which of two curves moves first
  normalized               each curve over its final value (compare sizes)
  loss_decoupling          downstream metrics against validation loss
and plots of each (matplotlib, Agg).
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


def _ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x))
  for value in np.unique(x):  # average ties
    tie = x == value
    ranks[tie] = ranks[tie].mean()
  return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
  if ra.std() == 0 or rb.std() == 0:
    return float("nan")
  return float(np.corrcoef(ra, rb)[0, 1])


def spearman_matrix(trajs: dict[tuple[str, str], np.ndarray], keys: list | None = None):
  """(keys, matrix, {"within": mean, "across": mean}) over trajectories sharing checkpoints."""
  keys = keys or sorted(trajs)
  n = len(keys)
  matrix = np.full((n, n), np.nan)
  for i, ki in enumerate(keys):
    for j, kj in enumerate(keys):
      a, b = ability(ki, trajs[ki][:, 3]), ability(kj, trajs[kj][:, 3])
      m = min(len(a), len(b))
      matrix[i, j] = spearman(a[:m], b[:m])
  within, across = [], []
  for i in range(n):
    for j in range(i + 1, n):
      if np.isnan(matrix[i, j]):
        continue
      (within if domain_of(keys[i][0]) == domain_of(keys[j][0]) else across).append(matrix[i, j])
  summary = {"within": float(np.mean(within)) if within else float("nan"),
             "across": float(np.mean(across)) if across else float("nan"),
             "pairs_within": len(within), "pairs_across": len(across)}
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


def loss_decoupling(loss_traj: np.ndarray, metric_traj: np.ndarray, key=("", "")) -> dict:
  """How well validation loss tracks a downstream metric: Spearman of (-loss, metric), and the
  largest stretch where loss improved but the metric did not (or the reverse)."""
  m = min(len(loss_traj), len(metric_traj))
  loss, metric = -loss_traj[:m, 3], ability(key, metric_traj[:m, 3])
  dl, dm = np.diff(loss), np.diff(metric)
  disagree = int(np.sum((dl > 0) != (dm > 0)))
  return {"spearman": spearman(loss, metric), "steps_disagreeing": disagree, "steps": int(len(dl))}


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


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
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_matrix(keys: list, matrix: np.ndarray, path: str, title: str) -> None:
  plt = _plt()
  labels = [f"{t}/{m}" for t, m in keys]
  fig, ax = plt.subplots(figsize=(max(4.0, 1 + 0.55 * len(keys)), max(3.5, 0.8 + 0.5 * len(keys))))
  image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdYlGn")
  ax.set_xticks(range(len(keys)), labels, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(len(keys)), labels, fontsize=8)
  for i in range(len(keys)):
    for j in range(len(keys)):
      if not np.isnan(matrix[i, j]):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6)
  fig.colorbar(image, ax=ax, fraction=0.046)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


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
  fig.savefig(path, dpi=110)
  plt.close(fig)
