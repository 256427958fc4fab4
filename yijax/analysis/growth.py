"""Model-growth analysis: held-out loss against tokens and training FLOPs, and G_stack's speedup.

A run's curve comes from its run dir: eval.jsonl (held-out loss and bits per
byte at each evaluation) joined with metrics.jsonl (tokens seen at that
step). A grown run starts where its small model stopped: `offset_tokens` and
`offset_flops` put the small model's tokens and FLOPs (counted at the small
model's own cost per token) in front of the grown run's.

Speedup (Du et al. 2024): with L* the final held-out loss of the target model
trained from scratch, C_scratch(L*) / C_stack(L*) - 1, where C(L) is the
training compute at which a run's held-out loss first reaches L (linear
interpolation between evaluations). A run that never reaches L* has no
speedup (None).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from yijax import paths


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
