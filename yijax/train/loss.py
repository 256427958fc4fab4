"""Next-token targets of packed rows, and cross entropy in vocabulary chunks.

The chunked loss never materializes float32 logits for the whole vocabulary:
it scans over vocabulary chunks of the output matrix keeping a running
max / sum-of-exponentials (an online logsumexp) and the target's logit, and
each chunk is rematerialized in the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def next_token_targets(tokens, segment_ids):
  """(targets, mask) [b, s]: position t predicts tokens[t+1] within its segment.

  mask (bool) is False at the last position of each document and of each
  row, and on padding (segment 0); targets there are 0. Pure jnp.
  """
  tokens, segment_ids = jnp.asarray(tokens), jnp.asarray(segment_ids)
  next_tokens = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  next_segment = jnp.concatenate([segment_ids[:, 1:], jnp.zeros_like(segment_ids[:, :1])], axis=1)
  mask = (segment_ids != 0) & (next_segment == segment_ids)
  return jnp.where(mask, next_tokens, 0), mask


def cross_entropy(hidden, head, targets, vocab_chunk: int = 0):
  """Per-token (nll, logsumexp) [b, s] from final hidden states [b, s, e] and head [e, vocab].

  vocab_chunk > 0 computes logits chunk by chunk (memory ~ b*s*chunk floats).
  """
  vocab = head.shape[1]
  if not vocab_chunk or vocab_chunk >= vocab:
    logits = jnp.einsum("bse,ev->bsv", hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return lse - target_logit, lse
  chunks = -(-vocab // vocab_chunk)
  pad = chunks * vocab_chunk - vocab
  head = jnp.pad(head, ((0, 0), (0, pad))).reshape(head.shape[0], chunks, vocab_chunk)
  head = jnp.moveaxis(head, 1, 0)  # [chunks, e, chunk]

  @jax.checkpoint
  def body(carry, inputs):
    running_max, running_sum, target_logit = carry
    index, w = inputs
    logits = jnp.einsum("bse,ec->bsc", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
    column = index * vocab_chunk + jnp.arange(vocab_chunk)
    logits = jnp.where(column < vocab, logits, -jnp.inf)
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
    running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(jnp.exp(logits - new_max[..., None]), -1)
    local = targets - index * vocab_chunk
    in_chunk = (local >= 0) & (local < vocab_chunk)
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, vocab_chunk - 1)[..., None], axis=-1)[..., 0]
    target_logit = jnp.where(in_chunk, picked, target_logit)
    return (new_max, running_sum, target_logit), None

  shape = targets.shape
  init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
  (running_max, running_sum, target_logit), _ = jax.lax.scan(body, init, (jnp.arange(chunks), head))
  lse = running_max + jnp.log(running_sum)
  return lse - target_logit, lse
