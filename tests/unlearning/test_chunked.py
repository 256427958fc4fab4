"""Unpacked chunked data: the chunking rule, padding, epochs, pairing, resume and process splits."""

import ml_collections
import numpy as np
import pytest

from yijax.data import chunked, prepare
from yijax.models.config import ConfigError

TOKENIZER = {"vocab_size": 1000, "bos_id": 1, "eos_id": 2, "pad_id": 0}
CHUNK = 8


def test_chunk_rule_keeps_consecutive_chunks_and_drops_short_tails():
  assert chunked.chunk_spans(21, CHUNK) == [(0, 8), (8, 8), (16, 5)]
  assert chunked.chunk_spans(19, CHUNK) == [(0, 8), (8, 8)]  # a 3-token tail is dropped
  assert chunked.chunk_spans(4, CHUNK) == []  # a document under 5 tokens leaves nothing
  ids = np.arange(100, 121)
  chunks = chunked.document_chunks(ids, CHUNK)
  np.testing.assert_array_equal(np.concatenate(chunks), ids)
  rows = chunked.pad_rows(chunks, CHUNK, [-1, 1, -1])
  np.testing.assert_array_equal(rows["tokens"][2], [116, 117, 118, 119, 120, 0, 0, 0])
  np.testing.assert_array_equal(rows["segment_ids"][2], [1] * 5 + [0] * 3)
  np.testing.assert_array_equal(rows["positions"][2], [0, 1, 2, 3, 4, 0, 0, 0])
  assert rows["factor"].shape == (3, CHUNK) and (rows["factor"][1] == 1).all() and (rows["factor"][2] == -1).all()


def _documents(offset, lengths):
  return [list(range(offset + 10 * i, offset + 10 * i + n)) for i, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("chunked"))
  # with bos + eos: 13 -> 15 tokens = 8 + 7; 6 -> 8; 3 -> 5 (kept); 14 -> 8 + 8; 15 -> 8 + 8 + 1 (dropped)
  prepare.write_token_source(out, "train", "forget", _documents(3, [13, 6, 3, 14, 15]), TOKENIZER,
                             num_shards=2)
  prepare.write_token_source(out, "train", "retain", _documents(500, [20, 9]), TOKENIZER)
  return out


def _data_cfg(prepared, **chunked_fields):
  cfg = ml_collections.ConfigDict({"prepared_dir": prepared, "split": "train", "add_bos": True, "add_eos": True,
                                   "shuffle_seed": 0, "chunked": chunked.default_config()})
  cfg.chunked.update({"enabled": True, "source": "forget", **chunked_fields})
  return cfg


def _expected_forget_chunks():
  chunks = []
  for doc in _documents(3, [13, 6, 3, 14, 15]):
    chunks += chunked.document_chunks([1] + doc + [2], CHUNK)
  return chunks


def test_load_chunks_reads_every_chunk_with_bos_and_eos(prepared):
  got = chunked.load_chunks(prepared, "train", "forget", CHUNK)
  expected = _expected_forget_chunks()
  assert [len(c) for c in got] == [8, 7, 8, 5, 8, 8, 8, 8] and len(expected) == 8
  for a, b in zip(got, expected):
    np.testing.assert_array_equal(a, b)
  assert len(chunked.load_chunks(prepared, "train", "forget", CHUNK, num_chunks=3)) == 3
  with pytest.raises(ConfigError, match="num_chunks=9 but source 'forget'.*only 8 chunks"):
    chunked.load_chunks(prepared, "train", "forget", CHUNK, num_chunks=9)


def _key(row_tokens):
  return tuple(int(t) for t in row_tokens if t)


def test_epochs_cover_every_chunk_once_and_pairs_alternate(prepared):
  expected = {_key(c) for c in _expected_forget_chunks()}
  retain = {_key(c) for c in chunked.load_chunks(prepared, "train", "retain", CHUNK)}
  it = chunked.train_iterator(_data_cfg(prepared, factor=-1.0, paired_source="retain"), CHUNK, 4, seed=1,
                              process_index=0, process_count=1)
  seen = []
  for _ in range(4):  # 2 forget chunks per batch: 4 batches = one epoch of 8
    batch = next(it)
    assert (batch["factor"][0::2] == -1).all() and (batch["factor"][1::2] == 1).all()
    seen += [_key(r) for r in batch["tokens"][0::2]]
    assert all(_key(r) in retain for r in batch["tokens"][1::2])
    assert (batch["segment_ids"] == (batch["tokens"] != 0)).all()
  assert sorted(seen) == sorted(expected) and it.get_state() == {"position": 8}
  second_epoch = [_key(r) for _ in range(4) for r in next(it)["tokens"][0::2]]
  assert sorted(second_epoch) == sorted(expected) and second_epoch != seen  # reshuffled


def test_state_resumes_the_stream_and_processes_split_the_global_batch(prepared):
  cfg = _data_cfg(prepared)
  straight = chunked.train_iterator(cfg, CHUNK, 4, seed=2, process_index=0, process_count=1)
  batches = [next(straight) for _ in range(5)]
  resumed = chunked.train_iterator(cfg, CHUNK, 4, seed=2, process_index=0, process_count=1)
  fresh = chunked.train_iterator(cfg, CHUNK, 4, seed=2, process_index=0, process_count=1)
  for _ in range(2):
    next(fresh)
  resumed.set_state(fresh.get_state())
  for expected in batches[2:]:
    np.testing.assert_array_equal(next(resumed)["tokens"], expected["tokens"])
  halves = [chunked.train_iterator(cfg, CHUNK, 2, seed=2, process_index=p, process_count=2) for p in (0, 1)]
  for expected in batches:
    np.testing.assert_array_equal(np.concatenate([next(h)["tokens"] for h in halves]), expected["tokens"])


def test_config_errors_name_the_field(prepared):
  with pytest.raises(ConfigError, match="data.chunked.source is empty"):
    chunked.train_iterator(_data_cfg(prepared, source=""), CHUNK, 4, process_index=0, process_count=1)
  with pytest.raises(ConfigError, match="must be even"):
    chunked.train_iterator(_data_cfg(prepared, paired_source="retain"), CHUNK, 3, process_index=0, process_count=1)


def _run_cfg(prepared, steps=0, batch=4, **chunked_fields):
  return ml_collections.ConfigDict({
      "data": _data_cfg(prepared, **chunked_fields), "train": {"steps": steps, "seq_len": CHUNK, "batch_size": batch},
      "checkpoint": {"every_steps": 50, "keep_every": 0}})


def test_epochs_set_the_steps_from_every_chunk_of_the_source(prepared):
  # 8 forget chunks; 3 forget rows per step (unpaired): an epoch is ceil(8 / 3) = 3 steps
  config = _run_cfg(prepared, batch=3, epochs=2.0, save_every_epoch=True)
  plan = chunked.resolve_epochs(config)
  assert plan["chunks"] == 8 and plan["steps_per_epoch"] == 3
  assert config.train.steps == 6 and config.checkpoint.every_steps == 3 and config.checkpoint.keep_every == 3
  # paired: half the rows are forget chunks (2 of 4): 4 steps an epoch; a resumed run sees its own steps again
  config = _run_cfg(prepared, steps=12, batch=4, epochs=3.0, paired_source="retain")
  assert chunked.resolve_epochs(config)["steps"] == 12 and config.checkpoint.every_steps == 50
  # every chunk is read within one epoch's steps
  it = chunked.train_iterator(_data_cfg(prepared), CHUNK, 3, seed=0, process_index=0, process_count=1)
  seen = {_key(r) for _ in range(3) for r in next(it)["tokens"]}
  assert seen == {_key(c) for c in _expected_forget_chunks()}
  with pytest.raises(ConfigError, match="train.steps=5 and data.chunked.epochs=2.*set train.steps=0"):
    chunked.resolve_epochs(_run_cfg(prepared, steps=5, batch=3, epochs=2.0))
  assert chunked.resolve_epochs(_run_cfg(prepared, steps=5)) is None  # epochs unset: train.steps counts
