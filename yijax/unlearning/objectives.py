"""Unlearning objectives (Yao et al. 2024, "Machine Unlearning of Pre-trained Large Language Models").

Each is a `train.objective` ("yijax.unlearning.objectives:NAME") over rows of
single document chunks (yijax/data/chunked.py, `data.chunked`). The loss is a
mean over sequences of a per-sequence term, as the reference code's HF
Trainer computes it with one sequence per device micro-batch: each objective
returns the summed terms and the number of rows as the denominator.

  gradient_ascent     -(mean target NLL) of each forget chunk
  random_labels       mean NLL of uniformly random targets (the code's `completely_random`)
  adversarial_labels  mean NLL of the original model's most likely wrong token at each target
  ascent_descent      factor x mean NLL, the factor from the data (-1 forget, +1 retain)
  ascent_kl           forget rows: factor x mean NLL; retain rows: factor x the mean over
                      positions of the cross entropy from the frozen original model's
                      next-token distribution to the model's

`reference` (train.reference_from: the original model, never updated) is read
by adversarial_labels and ascent_kl. Options (train.objective_options):
label_seed, adversarial_shift, kl_mask_padding, seq_chunk. No z-loss (the
reference recipe has none); MoE aux losses are added once per sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from yijax import models
from yijax.models.config import ConfigError, ModelConfig
from yijax.train import loss as losses
from yijax.train.objectives import aux_total, hidden_and_aux, sequence_mean_nll


def _result(terms, nll, mask, aux):
  """(total, denominator, sums, aux) from per-row terms [b] and per-token nll / mask [b, s]."""
  row_nll, has_targets = sequence_mean_nll(nll, mask)
  rows = jnp.sum(has_targets)
  total = jnp.sum(terms * has_targets)
  sums = {"loss": total, "nll": jnp.sum(row_nll * has_targets)}
  return total + aux_total(aux) * rows, rows, sums, aux


def _forward(config: ModelConfig, params, batch, targets, vocab_chunk: int):
  """(per-token nll [b, s] of `targets`, hidden [b, s, e], aux)."""
  hidden, aux = hidden_and_aux(config, params, batch)
  nll, _ = losses.cross_entropy(hidden, models.head_kernel(params, config), targets, vocab_chunk)
  return nll, hidden, aux


def _factor(batch, objective: str):
  if "factor" not in batch:
    raise ConfigError(f"train.objective={objective} reads each row's `factor`: train on data.chunked rows "
                      "(data.chunked.enabled=True with a source and factor)")
  return batch["factor"][:, 0].astype(jnp.float32)


def _need_reference(reference, objective: str):
  if reference is None:
    raise ConfigError(f"train.objective={objective} needs the frozen original model: set train.reference_from "
                      "(usually the same model as train.init_from)")


def _in_blocks(fn, seq_chunk: int, *arrays):
  """fn over blocks of `seq_chunk` positions (axis 1), with lax.map; the whole row when it does not divide."""
  length = arrays[0].shape[1]
  if seq_chunk <= 0 or seq_chunk >= length or length % seq_chunk:
    return fn(*arrays)
  blocks = length // seq_chunk
  split = [jnp.moveaxis(a.reshape(a.shape[0], blocks, seq_chunk, *a.shape[2:]), 1, 0) for a in arrays]
  out = jax.lax.map(lambda xs: fn(*xs), split)
  return jnp.moveaxis(out, 0, 1).reshape(arrays[0].shape[0], length, *out.shape[3:])


def _reference_hidden(config: ModelConfig, reference, batch):
  hidden = models.apply(config, reference, batch["tokens"], batch["positions"], batch["segment_ids"],
                        return_hidden=True)
  return jax.lax.stop_gradient(hidden)


def gradient_ascent(config: ModelConfig, params, batch, reference, options):
  """Ascent on the forget set: minimizes -(mean NLL) of every row."""
  targets, mask = losses.next_token_targets(batch["tokens"], batch["segment_ids"])
  nll, _, aux = _forward(config, params, batch, targets, options.get("vocab_chunk", 0))
  mask = mask.astype(jnp.float32)
  return _result(-sequence_mean_nll(nll, mask)[0], nll, mask, aux)


def random_targets(tokens, vocab_size: int, seed: int):
  """Uniform random targets [b, s], a function of (seed, the row's tokens): a chunk gets the same
  labels in every epoch, as the reference code draws them once when it tokenizes."""
  length = tokens.shape[1]
  weights = jnp.arange(length, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
  row_hash = jnp.sum(tokens.astype(jnp.uint32) * weights, axis=1, dtype=jnp.uint32)  # wraps mod 2**32
  base = jax.random.key(seed)
  draw = lambda h: jax.random.randint(jax.random.fold_in(base, h), (length,), 0, vocab_size, jnp.int32)
  return jax.vmap(draw)(row_hash)


def random_labels(config: ModelConfig, params, batch, reference, options):
  """Descent toward completely random labels: every target replaced by a uniform random token."""
  _, mask = losses.next_token_targets(batch["tokens"], batch["segment_ids"])
  targets = random_targets(batch["tokens"], config.vocab_size, int(options.get("label_seed", 0)))
  nll, _, aux = _forward(config, params, batch, targets, options.get("vocab_chunk", 0))
  mask = mask.astype(jnp.float32)
  return _result(sequence_mean_nll(nll, mask)[0], nll, mask, aux)


def adversarial_targets(config: ModelConfig, reference, batch, shift: bool = False, seq_chunk: int = 512):
  """The original model's most likely wrong token for each target [b, s] (no gradient).

  Intended (shift=False): position t predicts tokens[t+1]; its target is the
  argmax of the original model's distribution at t with tokens[t+1] excluded.
  shift=True reproduces the reference code, which excludes the input token at
  each position and lets the HF loss shift the labels: position t is trained
  toward argmax_{v != tokens[t+1]} of the distribution at t+1, the best wrong
  guess for the token after next.
  """
  tokens = batch["tokens"]
  true_next, _ = losses.next_token_targets(tokens, batch["segment_ids"])
  exclude = tokens if shift else true_next
  hidden = _reference_hidden(config, reference, batch)

  def block(h, ex):
    logits = models.head_logits(config, reference, h)  # [b, c, vocab] float32
    vocab_ids = jnp.arange(logits.shape[-1], dtype=ex.dtype)
    return jnp.argmax(jnp.where(vocab_ids == ex[..., None], -jnp.inf, logits), axis=-1).astype(jnp.int32)

  best_wrong = _in_blocks(block, seq_chunk, hidden, exclude)
  if shift:
    best_wrong = jnp.concatenate([best_wrong[:, 1:], jnp.zeros_like(best_wrong[:, :1])], axis=1)
  return jax.lax.stop_gradient(best_wrong)


def adversarial_labels(config: ModelConfig, params, batch, reference, options):
  """Descent toward adversarial labels: each target the original model's best wrong guess."""
  _need_reference(reference, "adversarial_labels")
  _, mask = losses.next_token_targets(batch["tokens"], batch["segment_ids"])
  targets = adversarial_targets(config, reference, batch, bool(options.get("adversarial_shift", False)),
                                int(options.get("seq_chunk", 512)))
  nll, _, aux = _forward(config, params, batch, targets, options.get("vocab_chunk", 0))
  mask = mask.astype(jnp.float32)
  return _result(sequence_mean_nll(nll, mask)[0], nll, mask, aux)


def ascent_descent(config: ModelConfig, params, batch, reference, options):
  """Gradient ascent on forget rows + descent on retain rows: factor x per-sequence mean NLL."""
  factor = _factor(batch, "ascent_descent")
  targets, mask = losses.next_token_targets(batch["tokens"], batch["segment_ids"])
  nll, _, aux = _forward(config, params, batch, targets, options.get("vocab_chunk", 0))
  mask = mask.astype(jnp.float32)
  return _result(factor * sequence_mean_nll(nll, mask)[0], nll, mask, aux)


def reference_cross_entropy(config: ModelConfig, params, hidden, reference, batch, seq_chunk: int = 512):
  """-sum_v p_ref(v) log q(v) at every position [b, s]: cross entropy from the frozen model's
  next-token distribution p_ref to the model's q (KL(p_ref || q) plus p_ref's entropy, a constant)."""
  ref_hidden = _reference_hidden(config, reference, batch)

  @jax.checkpoint
  def block(h, rh):
    log_q = jax.nn.log_softmax(models.head_logits(config, params, h), axis=-1)
    p_ref = jax.nn.softmax(models.head_logits(config, reference, rh), axis=-1)
    return -jnp.sum(jax.lax.stop_gradient(p_ref) * log_q, axis=-1)

  return _in_blocks(block, seq_chunk, hidden, ref_hidden)


def ascent_kl(config: ModelConfig, params, batch, reference, options):
  """Ascent on forget rows (factor < 0) + cross entropy to the original model on retain rows.

  The retain term is averaged over every position of the row, padding included, as the
  reference code's `.mean()` does; kl_mask_padding=True averages over the chunk's tokens only.
  """
  _need_reference(reference, "ascent_kl")
  factor = _factor(batch, "ascent_kl")
  targets, mask = losses.next_token_targets(batch["tokens"], batch["segment_ids"])
  nll, hidden, aux = _forward(config, params, batch, targets, options.get("vocab_chunk", 0))
  mask = mask.astype(jnp.float32)
  cross_entropy = reference_cross_entropy(config, params, hidden, reference, batch, int(options.get("seq_chunk", 512)))
  positions = ((batch["segment_ids"] != 0) if options.get("kl_mask_padding", False)
               else jnp.ones_like(batch["segment_ids"], bool)).astype(jnp.float32)
  retain_term = jnp.sum(cross_entropy * positions, axis=1) / jnp.maximum(jnp.sum(positions, axis=1), 1.0)
  terms = factor * jnp.where(factor < 0, sequence_mean_nll(nll, mask)[0], retain_term)
  total, rows, sums, aux = _result(terms, nll, mask, aux)
  sums["reference_ce"] = jnp.sum(jnp.where(factor < 0, 0.0, retain_term))
  return total, rows, sums, aux
