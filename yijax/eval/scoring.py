"""Masked next-token log-likelihood: the math shared by perplexity, multiple
choice and the training loss.

Rows are packed documents (`segment_ids` 1.. per document, 0 = padding).
Position t is scored on `tokens[t + 1]` only when both sit in the same
non-padding document, so padding and document boundaries never count.
`token_log_probs` computes the per-position log-probabilities from the final
hidden states in chunks of the sequence, so a [batch, length, vocab] float32
logits array for a long row and a 64K vocabulary is never held at once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from yijax import models
from yijax.models.config import ModelConfig
from yijax.train.loss import next_token_targets  # noqa: F401  (re-exported: one definition)


def log_probs_from_logits(logits, targets):
  """(log p(target), argmax == target), both [batch, length], from float logits [..., vocab]."""
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  log_probs = target_logit - jax.nn.logsumexp(logits, axis=-1)
  return log_probs, jnp.argmax(logits, axis=-1) == targets


def token_log_probs(config: ModelConfig, params: Any, tokens, targets, positions=None, segment_ids=None,
                    chunk_len: int = 512):
  """Per-position log p(targets[t] | tokens[..t]) and whether it was the argmax.

  Runs the decoder once for hidden states, then the LM head over chunks of
  `chunk_len` positions (the whole row when the length is not a multiple), so
  peak logits memory is batch * chunk_len * vocab floats. Traceable (call it
  inside jit). Returns (log_probs float32 [b, s], is_greedy bool [b, s]).
  """
  hidden = models.apply(config, params, tokens, positions, segment_ids, return_hidden=True)
  batch, length = tokens.shape
  if chunk_len <= 0 or chunk_len >= length or length % chunk_len:
    return log_probs_from_logits(models.head_logits(config, params, hidden), targets)
  chunks = length // chunk_len
  hidden = jnp.moveaxis(hidden.reshape(batch, chunks, chunk_len, -1), 1, 0)  # [chunks, b, chunk, embed]
  chunked_targets = jnp.moveaxis(targets.reshape(batch, chunks, chunk_len), 1, 0)

  def score_chunk(args):
    hidden_chunk, target_chunk = args
    return log_probs_from_logits(models.head_logits(config, params, hidden_chunk), target_chunk)

  log_probs, greedy = jax.lax.map(score_chunk, (hidden, chunked_targets))
  return (jnp.moveaxis(log_probs, 0, 1).reshape(batch, length),
          jnp.moveaxis(greedy, 0, 1).reshape(batch, length))


def masked_sum(values, mask):
  """Sum of values where mask is set (jnp.where, so NaN/inf at masked positions never leak)."""
  return jnp.sum(jnp.where(mask, values, 0), dtype=jnp.float32)
