"""Statistics every study reports through: means and standard errors over seeds, paired differences,
binomial standard errors of accuracies, dips against a start band, and computed claims.

A claim compares two arms on one metric, seed by seed where the seeds are paired (seed i of every arm
shares the init and the data order). Its verdict is computed, never typed:

  holds         |diff| >= 2 se and diff has the stated sign
  refuted       |diff| >= 2 se and diff has the opposite sign
  not resolved  otherwise (including a single seed, whose se is unknown)

where diff = mean(a) - mean(b) and se is the standard error of the mean paired difference (or of the
unpaired difference when the arms are not paired), never below `floor_se` (for example the binomial
standard error of an accuracy measured on N items).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

HOLDS, REFUTED, NOT_RESOLVED = "holds", "refuted", "not resolved"
SIGNS = {"a > b": 1, "a < b": -1}


def _values(values: Iterable[float]) -> np.ndarray:
  array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
  if array.ndim != 1 or array.size == 0:
    raise ValueError(f"expected a non-empty list of per-seed values, got shape {array.shape}")
  return array


def mean_se(values: Iterable[float]) -> tuple[float, float]:
  """Mean and standard error of the mean (sample standard deviation / sqrt(n)); se is nan for one value."""
  array = _values(values)
  if array.size == 1:
    return float(array[0]), math.nan
  return float(array.mean()), float(array.std(ddof=1) / math.sqrt(array.size))


def binomial_se(accuracy: float, num_items: int) -> float:
  """Standard error of an accuracy measured on num_items independent items: sqrt(p (1 - p) / N)."""
  if num_items <= 0:
    raise ValueError(f"num_items must be positive, got {num_items}")
  return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / num_items)


def difference(a: Iterable[float], b: Iterable[float] | float, paired: bool = True) -> tuple[float, float, int]:
  """mean(a) - mean(b), its standard error and the number of seeds it rests on.

  paired: the se of the mean of the per-seed differences a_i - b_i (a and b the same length).
  unpaired: sqrt(se_a^2 + se_b^2). A scalar b is a constant (a threshold, a known value) with no error.
  """
  a = _values(a)
  if np.isscalar(b):
    mean, se = mean_se(a)
    return mean - float(b), se, int(a.size)
  b = _values(b)
  if paired:
    if a.size != b.size:
      raise ValueError(f"paired difference needs as many values in a as in b ({a.size} != {b.size})")
    mean, se = mean_se(a - b)
    return mean, se, int(a.size)
  (mean_a, se_a), (mean_b, se_b) = mean_se(a), mean_se(b)
  return mean_a - mean_b, math.sqrt(se_a**2 + se_b**2), int(min(a.size, b.size))


def verdict(diff: float, se: float, sign: int) -> str:
  """holds / refuted / not resolved for a difference with the stated sign (+1: a > b, -1: a < b)."""
  if not math.isfinite(se) or not math.isfinite(diff) or diff == 0 or abs(diff) < 2 * se:
    return NOT_RESOLVED
  return HOLDS if (diff > 0) == (sign > 0) else REFUTED


def claim(claim_id: str, statement: str, metric: str, a: str, b: str, a_values: Sequence[float],
          b_values: Sequence[float] | float, expect: str, paired: bool = True, floor_se: float = 0.0) -> dict:
  """A computed claim: `statement` says that arm `a` is above (expect="a > b") or below ("a < b") arm `b`
  on `metric`. The values are per seed, in seed order. floor_se: a lower bound on the se (measurement
  noise the seeds alone may not show, e.g. the binomial se of an accuracy difference)."""
  if expect not in SIGNS:
    raise ValueError(f"expect must be one of {sorted(SIGNS)}, got {expect!r}")
  diff, se, n = difference(a_values, b_values, paired)
  se = max(se, floor_se) if math.isfinite(se) else se
  return {"id": claim_id, "statement": statement, "metric": metric, "a": a, "b": b, "expect": expect,
          "a_mean": float(np.mean(a_values)),
          "b_mean": float(b_values) if np.isscalar(b_values) else float(np.mean(b_values)),
          "diff": diff, "se": se, "n_seeds": n, "paired": paired and not np.isscalar(b_values),
          "verdict": verdict(diff, se, SIGNS[expect])}


def dip(curves: Sequence[Sequence[float]], start: Sequence[float], higher_is_better: bool = True) -> dict:
  """A dip of a metric below the start model's band, read from the seed mean, not a raw minimum.

  curves: [seeds, evaluations] of the metric during training; start: the start model's values (one per
  seed, or several evaluations per seed flattened). The curve is averaged over seeds first, its worst
  point taken, and compared with the start band: depth = start mean - worst mean (for higher_is_better),
  with se = sqrt(se_start^2 + se_worst^2). The dip is real when depth >= 2 se ("holds").
  """
  curves = np.asarray(curves, dtype=np.float64)
  if curves.ndim != 2:
    raise ValueError(f"curves must be [seeds, evaluations], got shape {curves.shape}")
  sign = 1.0 if higher_is_better else -1.0
  mean_curve = curves.mean(axis=0)
  se_curve = (curves.std(axis=0, ddof=1) / math.sqrt(curves.shape[0]) if curves.shape[0] > 1
              else np.full(curves.shape[1], math.nan))
  worst = int(np.argmin(sign * mean_curve))
  start_mean, start_se = mean_se(np.ravel(start))
  depth = sign * (start_mean - mean_curve[worst])
  se = math.sqrt(start_se**2 + se_curve[worst]**2)
  return {"start_mean": start_mean, "start_se": start_se, "worst_index": worst,
          "worst_mean": float(mean_curve[worst]), "worst_se": float(se_curve[worst]), "depth": float(depth),
          "se": se, "n_seeds": int(curves.shape[0]), "verdict": verdict(depth, se, 1)}


def gold_band(values: Iterable[float], gold: Iterable[float], k: float = 2.0, floor_se: float = 0.0) -> dict:
  """Whether a model is indistinguishable from the gold model on one metric (unlearning's success test).

  gold: the gold model's value per seed (retrained without the forget set; at least 2 seeds). The band is
  |mean(values) - mean(gold)| <= k se, se = sqrt(sd_gold^2 / n_gold + var), where var is the squared standard
  error of mean(values) over its seeds, or sd_gold^2 for a single run (one run varies as one gold run does), and
  se >= floor_se (measurement noise, e.g. the binomial se of an accuracy). Every gold seed passes against the
  band of its own model for up to 6 gold seeds: a seed lies at most (n-1)/sqrt(n) sd_gold from the gold mean,
  under k sqrt(1 + 1/n) sd_gold for k = 2.
  """
  values, gold = _values(values), _values(gold)
  if gold.size < 2:
    raise ValueError(f"the gold band needs the gold model on at least 2 seeds, got {gold.size}")
  sd_gold = float(gold.std(ddof=1))
  var = float(values.var(ddof=1)) / values.size if values.size > 1 else sd_gold**2
  se = max(math.sqrt(sd_gold**2 / gold.size + var), floor_se)
  diff = float(values.mean() - gold.mean())
  return {"mean": float(values.mean()), "gold_mean": float(gold.mean()), "diff": diff, "se": se, "k": k,
          "within": bool(abs(diff) <= k * se)}


def summarize(per_seed: dict[str, Sequence[float]]) -> dict[str, dict]:
  """{metric: [per-seed values]} -> {metric: {"mean", "se", "values"}}."""
  out = {}
  for metric, values in per_seed.items():
    mean, se = mean_se(values)
    out[metric] = {"mean": mean, "se": se, "values": [float(v) for v in values]}
  return out


def format_mean_se(mean: float, se: float, digits: int = 3) -> str:
  """"4.447 ± 0.012" ("4.447" when se is unknown)."""
  if not math.isfinite(se):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {se:.{digits}f}"
