"""A run's evaluations, built once per run: the context evaluators are built from, and the held-out loss.

The loop builds one `EvalContext` after it has its mesh and state: the model config, a `scoring.Scorer` on
the run's mesh (so every evaluator scores with the trainer's shardings and kernels, parameters where they
are), the tokenizer (loaded once, when an evaluator first asks), the run's data config and shapes. It then
calls each evaluator builder it was given once with that context:

  builder(context) -> evaluator or None       evaluator(params, step) -> {metric: value}

`yijax.eval.dense.evaluators_from_config` gives the builders a run config asks for (tasks, multiple
choice, per-source losses); a study or a test passes its own.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import numpy as np

from yijax.models.config import ModelConfig
from yijax.train import scoring

Evaluator = Callable[[Any, int], dict]
EvaluatorBuilder = Callable[["EvalContext"], "Evaluator | None"]


@dataclasses.dataclass
class EvalContext:
  """What evaluators are built from (see the module docstring)."""

  model_config: ModelConfig  # remat off: evaluation keeps no activations for a backward pass
  scorer: scoring.Scorer
  data: Any = None  # the run's config.data (prepared_dir resolved)
  seq_len: int = 0
  eval_batch_size: int = 0
  total_steps: int = 0
  tokenizer_path: str | None = None
  token_bytes: np.ndarray | None = None  # UTF-8 bytes per token id (bits per byte)

  @functools.cached_property
  def tokenizer(self):
    """The run's tokenizer, loaded on first use and kept."""
    from yijax.data.tokenizer import Tokenizer

    if not self.tokenizer_path:
      from yijax.errors import ConfigError

      raise ConfigError("this evaluator needs the run's tokenizer, but the run's data names none "
                        "(data.prepared_dir's manifest.json has no tokenizer)")
    return Tokenizer(self.tokenizer_path)


def context(model_config: ModelConfig, mesh=None, rules=None, **fields) -> EvalContext:
  """An EvalContext with a scorer on `mesh` (None: the parameters' own device)."""
  model_config = model_config.replace(remat_policy="none")
  return EvalContext(model_config, scoring.Scorer(model_config, mesh, rules), **fields)


def held_out_evaluator(context: EvalContext, batches: list[dict], local: bool = True) -> Evaluator:
  """Held-out loss, perplexity and bits per byte (with token_bytes) over fixed batches: each process's rows
  of global batches (local) or the same whole batches everywhere."""

  def evaluate(params, step: int = 0) -> dict:
    nll, count, num_bytes = 0.0, 0, 0
    for batch in batches:
      sums = context.scorer.nll_sums(params, batch, context.token_bytes, local=local)
      nll, count, num_bytes = nll + sums["nll"], count + sums["tokens"], num_bytes + sums["bytes"]
    loss = nll / max(count, 1)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens": count}
    if context.token_bytes is not None and num_bytes:
      out["bits_per_byte"] = nll / (math.log(2) * num_bytes)
    return out

  return evaluate


def run_evaluators(evaluators, params, step: int) -> dict:
  results = {}
  for evaluator in evaluators:
    results.update(evaluator(params, step))
  return results


def process_rows(batch_size: int) -> int:
  """Rows of a global eval batch each process builds."""
  return max(1, batch_size // jax.process_count())
