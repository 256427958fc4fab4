"""Token-id records: one ArrayRecord record per document, plus a lengths sidecar.

A record is the document's token ids as little-endian uint32 bytes. Beside
each shard `X.array_record` sits `X.lengths.npy` (int32 token count per
record, in record order), so the input pipeline can plan chunking, length
filtering and mixture weights without reading a single record.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from yijax.errors import DataError, MissingFileError

SHARD_SUFFIX = ".array_record"
LENGTHS_SUFFIX = ".lengths.npy"
# group_size:1 makes every record independently addressable (grain reads by index).
WRITER_OPTIONS = "group_size:1"
_DTYPE = np.dtype("<u4")


def encode_tokens(ids: Sequence[int] | np.ndarray) -> bytes:
  """Token ids -> little-endian uint32 bytes."""
  array = np.asarray(ids)
  if array.size and (array.min() < 0 or array.max() >= 2**32):
    raise DataError(f"token ids must be in [0, 2**32), got range [{array.min()}, {array.max()}]")
  return array.astype(_DTYPE, copy=False).tobytes()


def decode_tokens(data: bytes) -> np.ndarray:
  """Little-endian uint32 bytes -> int32 token ids (a fresh, writable array)."""
  if len(data) % 4:
    raise DataError(f"a token record must be a multiple of 4 bytes, got {len(data)}")
  return np.frombuffer(data, dtype=_DTYPE).astype(np.int32)


def lengths_path(shard_path: str) -> str:
  """`X.array_record` -> `X.lengths.npy`."""
  base = shard_path[:-len(SHARD_SUFFIX)] if shard_path.endswith(SHARD_SUFFIX) else shard_path
  return base + LENGTHS_SUFFIX


def _writer(path: str):
  from array_record.python import array_record_module

  return array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)


class ShardWriter:
  """Writes one shard under temporary names; `commit()` renames both files into place.

  A shard only appears under its final name once it is complete, so an
  interrupted writer never leaves something that looks finished.
  """

  def __init__(self, path: str):
    if not path.endswith(SHARD_SUFFIX):
      raise DataError(f"shard path {path} must end with {SHARD_SUFFIX}")
    self.path = path
    self._tmp = path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._writer = _writer(self._tmp)
    self._lengths: list[int] = []

  def write(self, ids: Sequence[int] | np.ndarray) -> None:
    self._writer.write(encode_tokens(ids))
    self._lengths.append(len(ids))

  @property
  def num_records(self) -> int:
    return len(self._lengths)

  def commit(self) -> np.ndarray:
    """Closes the shard, writes the lengths sidecar, renames both; returns the lengths."""
    self._writer.close()
    lengths = np.asarray(self._lengths, dtype=np.int32)
    final_lengths = lengths_path(self.path)
    with open(final_lengths + ".tmp", "wb") as f:
      np.save(f, lengths)
    os.replace(self._tmp, self.path)
    os.replace(final_lengths + ".tmp", final_lengths)
    return lengths

  def abort(self) -> None:
    """Closes and deletes the temporary file (nothing appears under the final name)."""
    try:
      self._writer.close()
    finally:
      if os.path.exists(self._tmp):
        os.remove(self._tmp)


def write_shard(path: str, documents: Iterable[Sequence[int]]) -> np.ndarray:
  """Writes token-id documents to `path` (+ lengths); returns the lengths."""
  writer = ShardWriter(path)
  try:
    for ids in documents:
      writer.write(ids)
  except BaseException:
    writer.abort()
    raise
  return writer.commit()


def read_lengths(shard_path: str) -> np.ndarray:
  """The int32 token counts of a shard's records, from its sidecar."""
  path = lengths_path(shard_path)
  if not os.path.exists(path):
    raise MissingFileError(f"{path} is missing (every shard needs its lengths sidecar); "
                            "rerun `yijax prepare` to rebuild the shard")
  return np.load(path).astype(np.int32, copy=False)


def read_shard(shard_path: str) -> list[np.ndarray]:
  """All documents of a shard as int32 arrays (tests and small tools; the pipeline reads by index)."""
  from array_record.python import array_record_module

  reader = array_record_module.ArrayRecordReader(shard_path)
  try:
    count = reader.num_records()
    return [decode_tokens(b) for b in reader.read(list(range(count)))] if count else []
  finally:
    reader.close()
