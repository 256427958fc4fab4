"""data.sft rows: packing with segment ids, the loss mask, no attention or loss across conversations, resume."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from yijax.data import chat, sft, synthetic_chat

from .conftest import MODEL


def _encoded(tokenizer, count=40, seq_len=128, seed=3):
  return sft.encode_all(synthetic_chat.conversations(count, seed), tokenizer, chat.ChatFormat(), seq_len)


def test_packed_rows_keep_conversations_apart(chat_tokenizer):
  encoded = _encoded(chat_tokenizer)
  items = list(zip(encoded.ids, encoded.masks))
  batch, taken = sft.pack_rows(items, rows=4, seq_len=128)
  assert 4 < taken < len(items)  # several conversations per row, and the batch is full
  flat = []
  for row in range(4):
    seg, pos, tok, mask = (batch[k][row] for k in ("segment_ids", "positions", "tokens", "loss_mask"))
    for s in range(1, seg.max() + 1):
      where = np.nonzero(seg == s)[0]
      assert np.all(np.diff(where) == 1) and np.array_equal(pos[where], np.arange(len(where)))
      flat.append((tok[where], mask[where].astype(bool)))
    assert np.all(tok[seg == 0] == 0) and np.all(mask[seg == 0] == 0)
  for (ids, mask), (want_ids, want_mask) in zip(flat, items[:taken]):
    assert np.array_equal(ids, want_ids) and np.array_equal(mask, want_mask)


def test_unpacked_rows_hold_one_conversation(chat_tokenizer):
  encoded = _encoded(chat_tokenizer)
  batch, taken = sft.pack_rows(list(zip(encoded.ids, encoded.masks))[:10], 4, 128, pack=False)
  assert taken == 4 and batch["segment_ids"].max() == 1


def test_too_long_conversations(chat_tokenizer):
  from yijax.errors import DataError

  convs = synthetic_chat.conversations(20, 3)
  lengths = [len(chat.ChatFormat().encode(chat_tokenizer, c)[0]) for c in convs]
  limit = sorted(lengths)[len(lengths) // 2]
  dropped = sft.encode_all(convs, chat_tokenizer, chat.ChatFormat(), limit, "drop")
  assert len(dropped.ids) + dropped.dropped == 20 and dropped.dropped > 0
  cut = sft.encode_all(convs, chat_tokenizer, chat.ChatFormat(), limit, "truncate")
  assert max(len(i) for i in cut.ids) == limit
  with pytest.raises(DataError, match="too_long=error"):
    sft.encode_all(convs, chat_tokenizer, chat.ChatFormat(), limit, "error")


def test_iterator_resumes_exactly_and_covers_every_conversation(chat_tokenizer):
  encoded = _encoded(chat_tokenizer)
  data = ml_collections.ConfigDict({"shuffle_seed": 0, "sft": sft.default_config()})
  first = sft.train_iterator(data, encoded, 128, 4, seed=1, process_index=0, process_count=1)
  batches = [next(first) for _ in range(3)]
  state = first.get_state()
  expected = [next(first) for _ in range(2)]
  resumed = sft.train_iterator(data, encoded, 128, 4, seed=1, process_index=0, process_count=1)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert all(np.array_equal(got[k], want[k]) for k in want)
  # processes take their rows of the same global batch
  halves = [sft.train_iterator(data, encoded, 128, 2, seed=1, process_index=p, process_count=2) for p in (0, 1)]
  whole = next(halves[0]), next(halves[1])
  assert np.array_equal(np.concatenate([whole[0]["tokens"], whole[1]["tokens"]]), batches[0]["tokens"])
  # an epoch places every conversation once
  seen = set()
  walker = sft.SftIterator(encoded, 128, 4, 0, 4, seed=0)
  while walker.epoch == 0:
    batch = next(walker)
    for row, seg in zip(batch["tokens"], batch["segment_ids"]):
      seen |= {tuple(row[seg == s]) for s in range(1, seg.max() + 1)}
  assert {tuple(ids) for ids in encoded.ids} <= seen


def test_packed_loss_equals_each_conversation_alone(chat_tokenizer, tiny_config):
  from yijax import models
  from yijax.train import sft as sft_train

  config = tiny_config.replace(**{k: MODEL[k] for k in ("vocab_size", "hidden_size", "num_layers", "head_dim")})
  params = models.init_params(config, jax.random.key(0))
  encoded = _encoded(chat_tokenizer, count=6)
  items = list(zip(encoded.ids, encoded.masks))
  packed, taken = sft.pack_rows(items, rows=1, seq_len=256)
  assert taken >= 3
  alone = [sft.pack_rows([item], rows=1, seq_len=256)[0] for item in items[:taken]]

  scored = jax.jit(lambda batch: sft_train.assistant_nll(config, params, batch)[::2])

  def per_segment(batch):
    nll, mask = scored(jax.tree.map(jnp.asarray, batch))
    seg = batch["segment_ids"][0]
    return [float(jnp.sum((nll * mask)[0][seg == s])) for s in range(1, seg.max() + 1)], \
        [int(jnp.sum(mask[0][seg == s])) for s in range(1, seg.max() + 1)]

  packed_sums, packed_counts = per_segment(packed)
  for i, batch in enumerate(alone):
    sums, counts = per_segment(batch)
    assert counts[0] == packed_counts[i] == int(items[i][1][1:].sum())  # every trained token but a leading one
    np.testing.assert_allclose(packed_sums[i], sums[0], rtol=2e-5)
