"""Token records: uint32 encoding, shards with lengths sidecars, no half-written shards."""

import os

import numpy as np
import pytest

from yijax.data import records


def test_encode_decode_roundtrip():
  ids = [0, 1, 2, 63999, 2**32 - 1]
  data = records.encode_tokens(ids)
  assert data == np.asarray(ids, "<u4").tobytes() and len(data) == 20
  back = records.decode_tokens(records.encode_tokens(ids[:4]))
  assert back.dtype == np.int32 and back.tolist() == ids[:4]
  assert records.decode_tokens(b"").shape == (0,)


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match="2\\*\\*32"):
    records.encode_tokens([-1, 3])
  with pytest.raises(ValueError, match="multiple of 4"):
    records.decode_tokens(b"abc")
  with pytest.raises(ValueError, match=".array_record"):
    records.ShardWriter("/tmp/not_a_shard.bin")


def test_shard_with_lengths_sidecar(tmp_path):
  docs = [[5, 6, 7], [8], list(range(100, 1100))]
  path = str(tmp_path / "a" / "shard-00000-of-00001.array_record")
  lengths = records.write_shard(path, docs)
  assert lengths.tolist() == [3, 1, 1000] and lengths.dtype == np.int32
  assert records.lengths_path(path) == str(tmp_path / "a" / "shard-00000-of-00001.lengths.npy")
  assert records.read_lengths(path).tolist() == [3, 1, 1000]
  assert [d.tolist() for d in records.read_shard(path)] == docs
  assert sorted(os.listdir(tmp_path / "a")) == ["shard-00000-of-00001.array_record",
                                                "shard-00000-of-00001.lengths.npy"]


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path):
  path = str(tmp_path / "s.array_record")

  def documents():
    yield [1, 2]
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError):
    records.write_shard(path, documents())
  assert os.listdir(tmp_path) == []
  with pytest.raises(FileNotFoundError, match="lengths sidecar"):
    records.read_lengths(path)
