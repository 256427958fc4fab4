"""Perplexity and bits per byte over packed batches.

Batches are the data pipeline's dicts of int32 arrays `tokens`, `segment_ids`
(1.. per packed document, 0 = padding) and `positions` (restarting at 0 per
document). Only positions with a next token in the same document are scored
(`scoring.next_token_targets`), so padding and packing do not change the
result. Bits per byte divides the total NLL by the UTF-8 bytes of the scored
tokens, which makes models with different tokenizers comparable.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from yijax.errors import DataError
from yijax.train import scoring
from yijax.models.config import ModelConfig

# times a scoring function was traced (= compiled), by kind; tests read it (scoring's own counter)
trace_counts = scoring.trace_counts


def token_byte_lengths(tokenizer) -> np.ndarray:
  """UTF-8 bytes per token id (see `Tokenizer.byte_lengths`)."""
  return tokenizer.byte_lengths()


def positions_from_segments(segment_ids: np.ndarray) -> np.ndarray:
  """Positions restarting at 0 wherever the segment id changes along a row."""
  index = np.arange(segment_ids.shape[1], dtype=np.int32)
  starts = np.concatenate(
      [np.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  return index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)


def _batch_arrays(batch: Mapping[str, Any], index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens, positions, segment_ids); without segment_ids a row is one document, without
  positions they restart at every segment."""
  if "tokens" not in batch:
    raise KeyError(f"batch {index} has no 'tokens' (keys: {sorted(batch)}); batches are dicts with "
                   "'tokens', 'segment_ids' and 'positions' [batch, length] int32 arrays")
  tokens = np.asarray(batch["tokens"], np.int32)
  if tokens.ndim != 2:
    raise DataError(f"batch {index}: 'tokens' must be [batch, length], got shape {tokens.shape}")
  segment_ids = np.asarray(batch.get("segment_ids", np.ones_like(tokens)), np.int32)
  if "positions" in batch:
    positions = np.asarray(batch["positions"], np.int32)
  else:
    positions = positions_from_segments(segment_ids).astype(np.int32)
  for name, array in (("segment_ids", segment_ids), ("positions", positions)):
    if array.shape != tokens.shape:
      raise DataError(f"batch {index}: '{name}' has shape {array.shape} but 'tokens' has {tokens.shape}")
  return tokens, positions, segment_ids


def evaluate_perplexity(config: ModelConfig, params: Any, batches: Iterable[Mapping[str, Any]],
                        bytes_per_token: np.ndarray | None = None, max_batches: int | None = None,
                        chunk_len: int = 512, scorer: scoring.Scorer | None = None) -> dict[str, float]:
  """Mean next-token NLL over every scored token of `batches`.

  Returns {"loss" (nats per token), "perplexity", "tokens", "batches"} and,
  with a `token_byte_lengths` table, "bytes" and "bits_per_byte" (total NLL
  / (ln 2 * total bytes of the scored tokens)). Batches of one shape share
  one compiled function (also across calls with the same config). scorer: a
  `scoring.Scorer` on the run's mesh (default: one on the parameters' device).
  """
  if bytes_per_token is not None:
    bytes_per_token = np.asarray(bytes_per_token, np.int32)
    if bytes_per_token.ndim != 1 or bytes_per_token.shape[0] < config.vocab_size:
      raise DataError(
          f"bytes_per_token has shape {bytes_per_token.shape} but model.vocab_size={config.vocab_size}; "
          "build it with token_byte_lengths(tokenizer) of the model's tokenizer"
      )
    byte_table = bytes_per_token[: config.vocab_size]
  else:
    byte_table = None
  scorer = scorer or scoring.Scorer(config, chunk_len=chunk_len)
  total_nll, total_tokens, total_bytes, count = 0.0, 0, 0, 0
  for index, batch in enumerate(batches):
    if max_batches is not None and index >= max_batches:
      break
    tokens, positions, segment_ids = _batch_arrays(batch, index)
    if tokens.max(initial=0) >= config.vocab_size or tokens.min(initial=0) < 0:
      raise DataError(f"batch {index} has token ids outside [0, model.vocab_size={config.vocab_size}); "
                       "was the data prepared with a different tokenizer?")
    sums = scorer.nll_sums(params, {"tokens": tokens, "positions": positions, "segment_ids": segment_ids},
                           byte_table)
    total_nll += float(sums["nll"])
    total_tokens += int(sums["tokens"])
    total_bytes += int(sums["bytes"])
    count += 1
  if total_tokens == 0:
    raise DataError(f"no scored tokens in {count} batch(es): every row is padding or one-token documents")
  loss = total_nll / total_tokens
  result = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": total_tokens, "batches": count}
  if bytes_per_token is not None:
    result["bytes"] = total_bytes
    result["bits_per_byte"] = total_nll / (math.log(2) * total_bytes) if total_bytes else float("nan")
  return result
