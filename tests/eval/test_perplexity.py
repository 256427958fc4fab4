"""Perplexity / bits per byte: equal to a per-document numpy computation,
blind to padding and packing, compiled once per batch shape."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm_eval_reference import train_small_tokenizer
from yijax import models
from yijax.eval import perplexity
from yijax.train import scoring
from yijax.models.config import ModelConfig

SEQ_LEN = 32


@pytest.fixture(scope="module")
def tiny():
  config = ModelConfig(vocab_size=101, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       mlp_dim=96, rope_theta=10000.0, max_seq_len=256, attention_impl="xla")
  return config, models.init_params(config, jax.random.key(0))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return train_small_tokenizer(str(tmp_path_factory.mktemp("tok")))


def pack(documents, rows, seq_len=SEQ_LEN):
  """Packs documents (lists of ids) into rows in order, as the data pipeline does."""
  tokens = np.zeros((rows, seq_len), np.int32)
  segment_ids = np.zeros_like(tokens)
  positions = np.zeros_like(tokens)
  row, offset, segment = 0, 0, 0
  for doc in documents:
    if offset + len(doc) > seq_len:
      row, offset, segment = row + 1, 0, 0
    segment += 1
    tokens[row, offset:offset + len(doc)] = doc
    segment_ids[row, offset:offset + len(doc)] = segment
    positions[row, offset:offset + len(doc)] = np.arange(len(doc))
    offset += len(doc)
  return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


@functools.lru_cache(maxsize=None)
def jitted_apply(config):
  return jax.jit(lambda params, tokens: models.apply(config, params, tokens))


def document_nll(config, params, doc, length=64):
  """Total NLL (float64) of a document run alone, by a full forward pass and numpy log-softmax.

  The document is right-padded to `length` (one compilation); causal
  attention keeps the padding out of its positions.
  """
  padded = np.zeros((1, length), np.int32)
  padded[0, :len(doc)] = doc
  logits = np.asarray(jitted_apply(config)(params, jnp.asarray(padded)), np.float64)[0, :len(doc)]
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -sum(log_probs[t, doc[t + 1]] for t in range(len(doc) - 1))


def random_documents(seed, count, vocab):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, vocab, size=int(rng.integers(1, 14))).tolist() for _ in range(count)]


def test_next_token_targets_mask_packing_and_padding():
  tokens = np.array([[5, 6, 7, 8, 9, 0]], np.int32)
  segments = np.array([[1, 1, 2, 2, 2, 0]], np.int32)
  targets, mask = jax.jit(scoring.next_token_targets)(tokens, segments)
  np.testing.assert_array_equal(mask, [[True, False, True, True, False, False]])
  np.testing.assert_array_equal(targets, [[6, 0, 8, 9, 0, 0]])


def test_equals_per_document_numpy(tiny):
  config, params = tiny
  docs = random_documents(0, 9, config.vocab_size)
  batch = pack(docs, rows=4)
  result = perplexity.evaluate_perplexity(config, params, [batch])
  expected_nll = sum(document_nll(config, params, d) for d in docs)
  expected_tokens = sum(len(d) - 1 for d in docs)
  assert result["tokens"] == expected_tokens
  np.testing.assert_allclose(result["loss"], expected_nll / expected_tokens, rtol=1e-5)
  np.testing.assert_allclose(result["perplexity"], math.exp(expected_nll / expected_tokens), rtol=1e-5)


def test_padding_rows_and_packing_do_not_change_the_result(tiny):
  config, params = tiny
  docs = random_documents(1, 8, config.vocab_size)
  batch = pack(docs, rows=4)
  packed = perplexity.evaluate_perplexity(config, params, [batch])
  derived = perplexity.positions_from_segments(batch["segment_ids"])
  real = batch["segment_ids"] != 0  # padding positions are never scored
  np.testing.assert_array_equal(derived[real], batch["positions"][real])
  # shorter rows pack differently; the trailing rows are all padding
  repacked = pack(docs, rows=len(docs) + 2, seq_len=16)
  split = [{k: v[:5] for k, v in repacked.items()}, {k: v[5:] for k, v in repacked.items()}]
  assert (split[1]["segment_ids"][-2:] == 0).all()
  other = perplexity.evaluate_perplexity(config, params, split)
  assert packed["tokens"] == other["tokens"]
  np.testing.assert_allclose(packed["loss"], other["loss"], rtol=1e-5)


def test_compiled_once_per_shape_and_reused_across_calls(tiny):
  config, params = tiny
  # a batch shape no other test uses, so this test sees its one compilation
  batches = [pack(random_documents(seed, 6, config.vocab_size), rows=5, seq_len=24) for seed in (2, 3, 4)]
  before = perplexity.trace_counts["perplexity"]
  perplexity.evaluate_perplexity(config, params, batches)
  perplexity.evaluate_perplexity(config, params, batches[:1])
  assert perplexity.trace_counts["perplexity"] - before == 1


def test_chunked_head_equals_whole_row(tiny):
  config, params = tiny
  batch = pack(random_documents(5, 8, config.vocab_size), rows=3)
  whole = perplexity.evaluate_perplexity(config, params, [batch], chunk_len=0)
  chunked = perplexity.evaluate_perplexity(config, params, [batch], chunk_len=8)
  np.testing.assert_allclose(whole["loss"], chunked["loss"], rtol=1e-6)


def test_byte_lengths_of_tokens_add_up_to_the_text(tokenizer):
  table = perplexity.token_byte_lengths(tokenizer)
  assert table[tokenizer.bos_id] == table[tokenizer.eos_id] == table[tokenizer.unk_id] == 0
  assert table[tokenizer.processor.PieceToId("<0xE4>")] == 1
  texts = ["the cat sat on a mat", "Quick  brown\tfox 2024.\n\nover café", "中文 and émoji 🙂 mixed",
           "  leading spaces and trailing  "]
  for text in texts:
    ids = tokenizer.encode(text)
    assert int(table[ids].sum()) == len(text.encode("utf-8")), text


def test_bits_per_byte_of_one_document(tokenizer):
  config = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, mlp_dim=64, max_seq_len=128, attention_impl="xla")
  params = models.init_params(config, jax.random.key(1))
  text = "The quick brown fox jumps over the lazy dog 42 times; café 中文."
  doc = [tokenizer.bos_id] + tokenizer.encode(text)  # BOS makes every text token a target
  batch = pack([doc], rows=2, seq_len=64)
  result = perplexity.evaluate_perplexity(config, params, [batch], perplexity.token_byte_lengths(tokenizer))
  total_nats = document_nll(config, params, doc)
  assert result["bytes"] == len(text.encode("utf-8"))
  np.testing.assert_allclose(result["bits_per_byte"], total_nats / (math.log(2) * len(text.encode("utf-8"))),
                             rtol=1e-5)


def test_bad_batches_and_tables_are_named(tiny, tokenizer):
  config, params = tiny
  with pytest.raises(KeyError, match="'tokens'"):
    perplexity.evaluate_perplexity(config, params, [{"ids": np.zeros((1, 4), np.int32)}])
  with pytest.raises(ValueError, match="bytes_per_token"):
    perplexity.evaluate_perplexity(config, params, [pack([[1, 2]], 1)], np.ones((7,), np.int32))
  with pytest.raises(ValueError, match="no scored tokens"):
    perplexity.evaluate_perplexity(config, params, [pack([[4]], 1)])
