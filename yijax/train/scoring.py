"""Token log-likelihoods of a model on a mesh: the one scoring path of training and evaluation.

The trainer's held-out loss and bits per byte, the in-training task evals and every `yijax eval` metric
(perplexity, multiple choice, the task battery, Min-K% membership, needle) are built on a `Scorer`:

  scorer = Scorer(model_config, mesh, rules)      # mesh=None: the parameters' own device(s)
  scorer.nll_sums(params, batch, byte_table)      # {"nll", "tokens", "bytes"}: loss, perplexity, bits/byte
  scorer.token_log_probs(params, tokens, targets, positions, segment_ids)   # per position, on the host
  scorer.continuation_sums(params, tokens, targets, score_mask)             # per row: multiple choice

Each function is jitted once per (model config, mesh, rules, chunk length) and traced under the mesh, so the
model's sharding constraints, ring attention on a `sequence` axis and the expert all-to-all are the
trainer's. Parameters are used where they are (a sharded train state stays sharded: no host copy); batches
are placed as the trainer places them (rows over the batch axes, the length over `sequence`), padded to a
multiple of those shards and cut back; results come back replicated, so every process reads them whole.
Host batches are the same on every process (`local=False`, the evaluators' own batches) or this process's
rows of a global batch (`local=True`, the trainer's held-out batches).

Rows are packed documents (`segment_ids` 1.. per document, 0 = padding). Position t is scored on
`tokens[t + 1]` only when both sit in the same non-padding document, so padding and document boundaries
never count. The LM head runs over chunks of the sequence, so a [batch, length, vocab] float32 logits array
for a long row and a 64K vocabulary is never held at once.
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from yijax import models, sharding
from yijax.models.config import ModelConfig
from yijax.train.loss import next_token_targets

# times each kind of scoring function was traced (= compiled); tests read it
trace_counts: collections.Counter = collections.Counter()


def log_probs_from_logits(logits, targets):
  """(log p(target), argmax == target), both [batch, length], from float logits [..., vocab]."""
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  log_probs = target_logit - jax.nn.logsumexp(logits, axis=-1)
  return log_probs, jnp.argmax(logits, axis=-1) == targets


def token_log_probs(config: ModelConfig, params: Any, tokens, targets, positions=None, segment_ids=None,
                    chunk_len: int = 512):
  """Per-position log p(targets[t] | tokens[..t]) and whether it was the argmax (traceable: call it in jit).

  Runs the decoder once for hidden states, then the LM head over chunks of `chunk_len` positions (the whole
  row when the length is not a multiple), so peak logits memory is batch * chunk_len * vocab floats.
  Returns (log_probs float32 [b, s], is_greedy bool [b, s]).
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


def host_targets(tokens: np.ndarray, segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`loss.next_token_targets` on host arrays (numpy): (targets, mask) [b, s]."""
  tokens, segment_ids = np.asarray(tokens), np.asarray(segment_ids)
  next_tokens = np.concatenate([tokens[:, 1:], np.zeros_like(tokens[:, :1])], axis=1)
  next_segment = np.concatenate([segment_ids[:, 1:], np.zeros_like(segment_ids[:, :1])], axis=1)
  mask = (segment_ids != 0) & (next_segment == segment_ids)
  return np.where(mask, next_tokens, 0), mask


def masked_sum(values, mask):
  """Sum of values where mask is set (jnp.where, so NaN/inf at masked positions never leak)."""
  return jnp.sum(jnp.where(mask, values, 0), dtype=jnp.float32)


def _nll_sums(config, chunk_len, params, tokens, positions, segment_ids, byte_table):
  trace_counts["perplexity"] += 1
  targets, mask = next_token_targets(tokens, segment_ids)
  log_probs, _ = token_log_probs(config, params, tokens, targets, positions, segment_ids, chunk_len)
  return {"nll": -masked_sum(log_probs, mask), "tokens": jnp.sum(mask, dtype=jnp.int32),
          "bytes": jnp.sum(jnp.where(mask, byte_table[targets], 0), dtype=jnp.int32)}


def _token_log_probs(config, chunk_len, params, tokens, targets, positions, segment_ids):
  trace_counts["token_log_probs"] += 1
  return token_log_probs(config, params, tokens, targets, positions, segment_ids, chunk_len)


def _continuation_sums(config, chunk_len, params, tokens, targets, score_mask):
  trace_counts["multiple_choice"] += 1
  # right padding only follows the real tokens, so causal attention needs no padding mask
  log_probs, greedy = token_log_probs(config, params, tokens, targets, chunk_len=chunk_len)
  return jnp.sum(jnp.where(score_mask, log_probs, 0.0), axis=-1), jnp.all(greedy | ~score_mask, axis=-1)


_KINDS = {"nll_sums": _nll_sums, "token_log_probs": _token_log_probs, "continuation_sums": _continuation_sums}


@functools.lru_cache(maxsize=64)
def _compiled(config: ModelConfig, mesh, rules, kind: str, chunk_len: int):
  """One jitted scoring function per (config, mesh, rules, kind, chunk_len); traced under the mesh."""
  fn = functools.partial(_KINDS[kind], config.replace(remat_policy="none"), chunk_len)
  if mesh is None:
    return jax.jit(fn)
  jitted = jax.jit(fn, out_shardings=sharding.replicated(mesh))

  def call(*args):
    with sharding.use_mesh(mesh, rules):
      return jitted(*args)

  return call


class Scorer:
  """Scores of one model on one mesh (see the module docstring); cheap to build, compiled functions shared."""

  def __init__(self, config: ModelConfig, mesh=None, rules=None, chunk_len: int = 512):
    self.config, self.mesh, self.chunk_len = config, mesh, chunk_len
    self.rules = sharding.normalize_rules(rules) if mesh is not None else None
    if mesh is not None:
      self._batch_sharding = sharding.data_sharding(mesh, self.rules)
      self._shards = [math.prod(mesh.shape[a] for a in _axes(entry))
                      for entry in tuple(self._batch_sharding.spec) + (None,) * 2][:2]
    else:
      self._shards = [1, 1]

  def _fn(self, kind: str):
    return _compiled(self.config, self.mesh, self.rules, kind, self.chunk_len)

  def _place(self, arrays: list[np.ndarray], local: bool) -> tuple[list, tuple[int, int]]:
    """The [b, s] host arrays padded (zeros) to whole shards and placed on the mesh; their unpadded shape."""
    shape = arrays[0].shape
    if self.mesh is None:
      return [jnp.asarray(a) for a in arrays], shape
    # local rows are this process's part of the global batch: its share of the row shards
    rows_shards = max(1, self._shards[0] // jax.process_count()) if local else self._shards[0]
    # a sharded length is cut into 2 chunks per shard by ring attention's zig-zag order
    length_multiple = 2 * self._shards[1] if self._shards[1] > 1 else 1
    pad = (-shape[0] % rows_shards, -shape[1] % length_multiple)
    placed = []
    for a in arrays:
      a = np.pad(a, ((0, pad[0]), (0, pad[1])))
      if local:
        placed.append(jax.make_array_from_process_local_data(self._batch_sharding, a))
      else:
        placed.append(jax.make_array_from_callback(a.shape, self._batch_sharding, lambda index, a=a: a[index]))
    return placed, shape

  def nll_sums(self, params, batch: Mapping[str, Any], byte_table=None, local: bool = False) -> dict:
    """{"nll": summed NLL (nats), "tokens": scored tokens, "bytes": their UTF-8 bytes (0 without a
    byte table)} of a packed batch ("tokens", "segment_ids", "positions" [b, s])."""
    tokens = np.asarray(batch["tokens"], np.int32)
    segment_ids = np.asarray(batch["segment_ids"], np.int32)
    positions = np.asarray(batch["positions"], np.int32)
    table = np.zeros((self.config.vocab_size,), np.int32) if byte_table is None else \
        np.asarray(byte_table, np.int32)[: self.config.vocab_size]
    placed, _ = self._place([tokens, positions, segment_ids], local)
    sums = jax.device_get(self._fn("nll_sums")(params, *placed, self._replicate(table)))
    return {"nll": float(sums["nll"]), "tokens": int(sums["tokens"]), "bytes": int(sums["bytes"])}

  def token_log_probs(self, params, tokens, targets, positions=None, segment_ids=None):
    """(log p(targets[t] | tokens[..t]) float32 [b, s], is it the argmax bool [b, s]) as host arrays."""
    tokens = np.asarray(tokens, np.int32)
    segment_ids = np.ones_like(tokens) if segment_ids is None else np.asarray(segment_ids, np.int32)
    if positions is None:
      positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    placed, (b, s) = self._place([tokens, np.asarray(targets, np.int32), np.asarray(positions, np.int32),
                                  segment_ids], False)
    log_probs, greedy = jax.device_get(self._fn("token_log_probs")(params, *placed))
    return np.asarray(log_probs)[:b, :s], np.asarray(greedy)[:b, :s]

  def continuation_sums(self, params, tokens, targets, score_mask):
    """(summed log p over score_mask [b], every scored target the argmax [b]) of right-padded rows."""
    placed, (b, _) = self._place([np.asarray(tokens, np.int32), np.asarray(targets, np.int32),
                                  np.asarray(score_mask, bool)], False)
    sums, greedy = jax.device_get(self._fn("continuation_sums")(params, *placed))
    return np.asarray(sums)[:b], np.asarray(greedy)[:b]

  def _replicate(self, array: np.ndarray):
    if self.mesh is None:
      return jnp.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding.replicated(self.mesh), lambda index: array[index])


def _axes(entry) -> tuple:
  return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
