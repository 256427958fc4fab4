"""Evaluation of an unlearned model: sequence-weighted perplexity, accuracy, Min-K% MIA, FLOPs.

Perplexity is sequence-weighted, as Yao et al. report it: exp of minus the
mean over sequences of each sequence's mean token log-probability (every
chunk counts once, whatever its length). Accuracy is top-1 next-token
accuracy over every scored token of the set (the reference code also counts
padding positions as misses; here only real tokens are scored).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from yijax.errors import DataError
from yijax.eval import mia
from yijax.models.config import ModelConfig


def sequence_metrics(scored: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
  """{"perplexity", "loss", "loss_se", "token_loss", "accuracy", "sequences", "tokens"} of (log_probs, correct)
  per sequence: loss is the mean over sequences of each one's mean NLL (perplexity = exp(loss)), loss_se its
  standard error over sequences (the measurement noise of the set), token_loss the mean NLL over all tokens."""
  scored = [(lp, ok) for lp, ok in scored if len(lp)]
  if not scored:
    raise DataError("no sequence with a scored token")
  per_sequence = np.array([-np.mean(lp) for lp, _ in scored])
  loss = float(per_sequence.mean())
  tokens = int(sum(len(lp) for lp, _ in scored))
  correct = int(sum(int(np.sum(ok)) for _, ok in scored))
  loss_se = float(per_sequence.std(ddof=1) / math.sqrt(len(scored))) if len(scored) > 1 else math.nan
  return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "loss_se": loss_se,
          "token_loss": float(-sum(np.sum(lp) for lp, _ in scored) / tokens), "accuracy": correct / tokens,
          "sequences": len(scored), "tokens": tokens}


def evaluate_model(config: ModelConfig, params: Any, sets: Mapping[str, Sequence[np.ndarray]], chunk_len: int,
                   members: str = "forget", nonmembers: str = "approximate", ks: Sequence[float] = mia.DEFAULT_KS,
                   batch_size: int = 8) -> dict:
  """Metrics of every evaluation set, and Min-K% membership inference of `members` vs as many `nonmembers`.

  Returns {set: sequence_metrics, ..., "mia": {"auc": {k: ...}, "min_k": {k: {...}}, "members": n}}.
  """
  scored = {name: mia.score_chunks(config, params, chunks, chunk_len, batch_size) for name, chunks in sets.items()}
  out: dict = {name: sequence_metrics(s) for name, s in scored.items()}
  if members in scored and nonmembers in scored:
    count = min(len(scored[members]), len(scored[nonmembers]))
    metrics = mia.min_k_metrics([lp for lp, _ in scored[members][:count]],
                                [lp for lp, _ in scored[nonmembers][:count]], ks)
    out["mia"] = {"members": count, "auc": {k: m["auc"] for k, m in metrics.items()}, "min_k": metrics}
  return out


def run_flops(model: ModelConfig, steps: int, batch_size: int, seq_len: int, reference: bool = False) -> float:
  """Training FLOPs of a run (6N + attention per token, padding included: it is computed), plus a
  forward pass of the frozen reference model on every row (a third of that) when one is read."""
  from yijax.train import flops

  per_token = flops.train_flops_per_token(model, seq_len)
  if reference:
    per_token *= 4.0 / 3.0
  return float(per_token) * steps * batch_size * seq_len
