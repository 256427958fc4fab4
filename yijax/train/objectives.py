"""Training objectives: what a train step minimizes, as a plain function.

  objective(config, params, batch, reference, options)
      -> (total, denominator, sums, aux)

total: the summed loss of the batch; the step divides the gradient of the
sum over microbatches by the summed `denominator` (target tokens for the
language-model loss, sequences for per-sequence objectives), so any
microbatch count gives the same update. sums: {name: summed metric}, logged
divided by the denominator ("loss" always present). aux: the model's
{"losses", "stats"} (MoE balance losses already inside total).
reference: parameters of a frozen model (None unless the run loads one).

`train.objective` names one: "lm" (the default), "sft" (chat fine-tuning) or "package.module:function"
for objectives defined elsewhere (yijax.unlearning's, a study's own).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp

from yijax import models
from yijax.models.config import ConfigError, ModelConfig
from yijax.train import loss as losses


def hidden_and_aux(config: ModelConfig, params, batch):
  """The final hidden states and the model's aux; batch["dropout_rng"], which the train step adds when
  model.dropout_rate > 0, turns dropout on."""
  return models.apply(config, params, batch["tokens"], batch["positions"], batch["segment_ids"],
                      return_hidden=True, return_aux=True, dropout_rng=batch.get("dropout_rng"))


def token_nll(config: ModelConfig, params, batch, vocab_chunk: int):
  """(nll [b, s], lse [b, s], mask [b, s] float, aux) of next-token prediction."""
  hidden, aux = hidden_and_aux(config, params, batch)
  targets, mask = losses.next_token_targets(batch["tokens"], batch["segment_ids"])
  nll, lse = losses.cross_entropy(hidden, models.head_kernel(params, config), targets, vocab_chunk)
  return nll, lse, mask.astype(jnp.float32), aux


def aux_total(aux) -> jax.Array:
  return sum(aux["losses"].values()) if aux["losses"] else jnp.float32(0)


def lm(config: ModelConfig, params, batch, reference, options):
  """Next-token cross entropy summed over target tokens + z-loss + the model's aux losses."""
  nll, lse, mask, aux = token_nll(config, params, batch, options.get("vocab_chunk", 0))
  count = jnp.sum(mask)
  nll_sum, z_sum = jnp.sum(nll * mask), jnp.sum(jnp.square(lse) * mask)
  total = nll_sum + options.get("z_loss", 0.0) * z_sum + aux_total(aux) * jnp.maximum(count, 1.0)
  return total, count, {"loss": nll_sum, "z_loss": z_sum}, aux


def sequence_mean_nll(nll, mask):
  """Each row's mean target NLL [b] (rows without targets: 0) and whether it has targets."""
  per_row = jnp.sum(nll * mask, axis=1)
  counts = jnp.sum(mask, axis=1)
  return per_row / jnp.maximum(counts, 1.0), (counts > 0).astype(jnp.float32)


BUILTIN: dict[str, Callable] = {"lm": lm}
ALIASES = {"sft": "yijax.train.sft:objective"}  # chat fine-tuning: assistant tokens only, NEFTune (train/sft.py)


@functools.lru_cache(maxsize=None)
def resolve(name: str) -> Callable:
  if name in BUILTIN:
    return BUILTIN[name]
  name = ALIASES.get(name, name)
  module, _, fn = name.partition(":")
  if not fn:
    raise ConfigError(f"train.objective={name!r} is not one of {sorted(BUILTIN)} and not 'package.module:function'")
  try:
    return getattr(importlib.import_module(module), fn)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"train.objective={name!r}: {e}") from None


def evaluate_nll(config: ModelConfig, params, batch, vocab_chunk: int) -> tuple[Any, Any]:
  """(nll_sum, count) over target tokens: held-out evaluation."""
  nll, _, mask, _ = token_nll(config, params, batch, vocab_chunk)
  return jnp.sum(nll * mask), jnp.sum(mask)
