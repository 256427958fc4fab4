"""Model-growth analysis: held-out loss against tokens and training FLOPs, and G_stack's speedup.

A run's curve comes from its run dir: eval.jsonl (held-out loss and bits per
byte at each evaluation) joined with metrics.jsonl (tokens seen at that
step). A grown run starts where its small model stopped: `offset_tokens` and
`offset_flops` put the small model's tokens and FLOPs (counted at the small
model's own cost per token) in front of the grown run's.

Speedup (Du et al. 2024): with L* the final held-out loss of the target model
trained from scratch, C_scratch(L*) / C_stack(L*) - 1, where C(L) is the
training compute (or tokens) at which a run's held-out loss first reaches L
(linear interpolation between evaluations). A run that never reaches L* has
no speedup (None).

Over paired seeds (`seed_speedup`): L* is the scratch seed mean of the final
loss, which the seed-mean scratch curve reaches at its end, D (tokens or
FLOPs, the seed mean). Each grown seed i reaches L* at T_i: speedup_i =
D / T_i - 1, reported as mean +- se over seeds. The claim that a grown arm
needs fewer tokens compares mean(T_i) with D; its se is the seeds' spread of
T_i combined with the uncertainty of L* itself (its se over scratch seeds)
carried through the grown curve's slope at L*: sqrt(se_T^2 + (dT/dL se_L)^2).
A seed that never reaches L* leaves the speedup unknown (None) and the claim
not resolved.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from yijax import paths
from yijax.analysis import stats


@dataclasses.dataclass
class Curve:
  """Held-out evaluations of one run, in order: step, tokens, FLOPs, loss, bits per byte."""

  steps: np.ndarray
  tokens: np.ndarray
  flops: np.ndarray
  loss: np.ndarray
  bits_per_byte: np.ndarray

  def to_json(self) -> dict:
    return {k: [float(v) for v in getattr(self, k)] for k in ("steps", "tokens", "flops", "loss", "bits_per_byte")}


def _records(location: str) -> list[dict]:
  return [json.loads(line) for line in paths.read_text(location).splitlines() if line.strip()]


def tokens_by_step(run_dir: str) -> dict[int, float]:
  """{step: tokens seen after it} from a run's metrics.jsonl."""
  return {int(r["step"]): float(r["tokens_seen"]) for r in _records(paths.join(run_dir, "metrics.jsonl"))
          if "tokens_seen" in r}


def eval_curve(run_dir: str, flops_per_token: float, offset_tokens: float = 0.0, offset_flops: float = 0.0) -> Curve:
  """The held-out curve of a run, shifted by what came before it (a small model's tokens and FLOPs)."""
  tokens = tokens_by_step(run_dir)
  evals = [r for r in _records(paths.join(run_dir, "eval.jsonl")) if "loss" in r]
  if not evals:
    raise ValueError(f"{run_dir}/eval.jsonl holds no held-out evaluations; set eval.every_steps and eval.batches")
  steps = np.asarray([r["step"] for r in evals], np.float64)
  seen = np.asarray([tokens[int(s)] for s in steps], np.float64)
  return Curve(steps, seen + offset_tokens, seen * flops_per_token + offset_flops,
               np.asarray([r["loss"] for r in evals], np.float64),
               np.asarray([r.get("bits_per_byte", np.nan) for r in evals], np.float64))


def first_reaching(x, y, target: float) -> float | None:
  """The first x at which y falls to `target`, interpolated linearly between points; None if never."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if y[0] <= target:
    return float(x[0])
  for i in range(1, len(y)):
    if y[i] <= target:
      return float(x[i - 1] + (x[i] - x[i - 1]) * (y[i - 1] - target) / (y[i - 1] - y[i]))
  return None


def value_at(x, y, x0: float) -> float | None:
  """y interpolated at x0 (None outside the measured range)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x0 < x[0] or x0 > x[-1]:
    return None
  return float(np.interp(x0, x, y))


def speedup(scratch: Curve, grown: Curve) -> dict:
  """{"target_loss": L*, "scratch_flops": C_scratch(L*), "grown_flops": C_grown(L*), "speedup": ratio - 1}."""
  target = float(scratch.loss[-1])
  scratch_flops = first_reaching(scratch.flops, scratch.loss, target)
  grown_flops = first_reaching(grown.flops, grown.loss, target)
  return {"target_loss": target, "scratch_flops": scratch_flops, "grown_flops": grown_flops,
          "speedup": None if grown_flops is None else scratch_flops / grown_flops - 1.0}


def _slope(x, y, target: float) -> float:
  """|dx/dy| of the piecewise-linear curve on the segment where y first falls to target (nan if it never does)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  below = np.nonzero(y <= target)[0]
  if not len(below) or len(y) < 2:
    return float("nan")
  i = max(int(below[0]), 1)
  drop = y[i - 1] - y[i]
  return float(abs((x[i] - x[i - 1]) / drop)) if drop != 0 else float("inf")


def seed_speedup(scratch: list[Curve], grown: list[Curve], field: str = "tokens") -> dict:
  """The speedup of a grown arm over scratch in `field` ("tokens" or "flops"), seed by seed against the scratch
  seed mean (module docstring). {"target_loss", "target_se", "scratch_cost", "costs": [T_i or None],
  "values": [speedup_i or None], "reached", "mean", "se", "cost_mean", "cost_se"}."""
  target, target_se = stats.mean_se([c.loss[-1] for c in scratch])
  scratch_cost = float(np.mean([getattr(c, field)[-1] for c in scratch]))
  costs = [first_reaching(getattr(c, field), c.loss, target) for c in grown]
  reached = sum(c is not None for c in costs)
  out = {"target_loss": target, "target_se": target_se, "scratch_cost": scratch_cost, "costs": costs,
         "values": [None if c is None else scratch_cost / c - 1.0 for c in costs], "reached": reached,
         "seeds": len(grown), "mean": None, "se": None, "cost_mean": None, "cost_se": None}
  if reached == len(grown):
    out["mean"], out["se"] = stats.mean_se(out["values"])
    cost_mean, cost_se = stats.mean_se(costs)
    slopes = [_slope(getattr(c, field), c.loss, target) for c in grown]
    slope = float(np.mean(slopes))
    # the target's own uncertainty, carried through the grown curves' slope at it
    target_term = slope * target_se if np.isfinite(target_se) else float("nan")
    out["cost_mean"] = cost_mean
    out["cost_se"] = float(np.hypot(cost_se, target_term)) if np.isfinite(cost_se) else cost_se
  return out


def speedup_claim(arm: str, label: str, speed: dict, field: str = "tokens") -> dict:
  """"`arm` reaches scratch's final loss in fewer `field`": mean(T_i) against the scratch seed mean D."""
  statement = f"{label} reaches scratch's seed-mean final loss in fewer {field} than scratch (small model included)"
  metric = f"{field} to scratch's final loss"
  if speed["reached"] < speed["seeds"]:
    return {"id": f"{arm}_fewer_{field}", "statement": statement, "metric": metric, "a": arm, "b": "scratch",
            "expect": "a < b", "a_mean": None, "b_mean": speed["scratch_cost"], "diff": None, "se": None,
            "n_seeds": speed["seeds"], "paired": False, "verdict": stats.NOT_RESOLVED,
            "note": f"{speed['reached']} of {speed['seeds']} seeds reached the loss"}
  costs = [float(c) for c in speed["costs"]]
  floor = speed["cost_se"] if speed["cost_se"] is not None and np.isfinite(speed["cost_se"]) else 0.0
  return stats.claim(f"{arm}_fewer_{field}", statement, metric, arm, "scratch", costs, speed["scratch_cost"], "a < b",
                     floor_se=floor)
