"""Inputs of `yijax curate`: planning tasks over text / JSONL / TFDS inputs and reading them as datatrove Documents.

Inputs are what `yijax prepare` reads (yijax/data/manifest.py): a text file is one document, a JSONL line
one document, a TFDS example one document. Each task reads one unit (whole text files, a line-aligned
byte range of a JSONL file, or an index range of a TFDS split). Bad input never stops a task: empty
documents, unreadable files, binary files, documents over `input.max_document_bytes` (huge single lines
are skipped without reading them whole), invalid JSON and missing text fields are written with their
reason under DIR/removed/input/; invalid UTF-8 is repaired (U+FFFD), counted and left to the garbled-text rule.
"""

from __future__ import annotations

import json
import os

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from yijax.data import corpus, manifest
from yijax.errors import DataError

_CHUNK = 1 << 20


def plan(inputs: list[str], config) -> list[dict]:
  """The units of work (one per task) over comma-separated paths, globs, directories or `tfds:NAME:SPLIT`."""
  units = []
  for value in inputs:
    spec = manifest.SourceSpec("input", "train", (value,), config.input.text_field, config.input.format,
                               config.input.tfds_data_dir or None)
    if spec.tfds:
      name, split = spec.tfds["name"], spec.tfds["split"]
      count = len(corpus.tfds_source(name, split, spec.tfds_data_dir))
      step = config.input.tfds_docs_per_shard
      units += [{"tfds": {"name": name, "split": split, "data_dir": spec.tfds_data_dir}, "start": s,
                 "end": min(s + step, count)} for s in range(0, count, step)]
      continue
    try:
      files = manifest.resolve_files(spec)
    except DataError as e:
      raise DataError(str(e).replace("--source=input=", "--input=")) from None
    shard_bytes = max(int(config.input.shard_mb * (1 << 20)), 1)
    group, group_bytes = [], 0
    for path in files:
      size = os.path.getsize(path) if os.path.isfile(path) else 0
      if manifest.is_jsonl(path, config.input.format):
        units += [{"pieces": [[path, "jsonl", s, min(s + shard_bytes, size)]]} for s in range(0, size, shard_bytes)]
        if size == 0:
          units.append({"pieces": [[path, "jsonl", 0, 0]]})
        continue
      if group and group_bytes + size > shard_bytes:
        units.append({"pieces": group})
        group, group_bytes = [], 0
      group.append([path, "text", 0, size])
      group_bytes += size
    if group:
      units.append({"pieces": group})
  if not units:
    raise DataError(f"--input={','.join(inputs)}: no input documents found")
  return units


def _repair(raw: bytes, counts: dict) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    counts["invalid_utf8_documents"] += 1
    return raw.decode("utf-8", errors="replace")


def _is_binary(raw: bytes, max_ratio: float) -> bool:
  sample = raw[:65536]
  if b"\x00" in sample:
    return True
  control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
  return bool(sample) and control / len(sample) > max_ratio


def _lines(path: str, start: int, end: int, limit: int):
  """(offset, line bytes or None when longer than limit, length) of the lines starting in [start, end)."""
  with open(path, "rb") as f:
    if start > 0:
      f.seek(start - 1)
      while (piece := f.readline(_CHUNK)) and not piece.endswith(b"\n"):
        pass
    offset = f.tell()
    while offset < end:
      line = f.readline(limit + 1)
      if not line:
        return
      length = len(line)
      if length > limit and not line.endswith(b"\n"):
        while (piece := f.readline(_CHUNK)) and (length := length + len(piece)) and not piece.endswith(b"\n"):
          pass
        line = None
      yield offset, line, length
      offset += length


class UnitReader(PipelineStep):
  """Reads unit `rank` of the plan; writes every unusable input with its reason through `removed_writer`."""

  name = "yijax input reader"
  type = "📖 - READER"

  def __init__(self, units: list[dict], config, removed_writer, counts_dir: str):
    super().__init__()
    self.units, self.removed_writer, self.counts_dir = units, removed_writer, counts_dir
    self.text_field, self.id_field = config.input.text_field, config.input.id_field
    self.max_bytes, self.binary_ratio = config.input.max_document_bytes, config.input.max_binary_ratio
    self.keep_fields = tuple(config.input.keep_fields)

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    counts = {"documents": 0, "bytes": 0, "invalid_utf8_documents": 0, "blank_lines": 0, "unreadable_files": [],
              "removed": {}}
    with self.removed_writer as writer:
      def drop(doc_id, reason, text="", size=0):
        counts["removed"][reason] = counts["removed"].get(reason, 0) + 1
        writer.write(Document(text=text[:1000], id=doc_id, metadata={"stage": "input", "reason": reason,
                                                                      "bytes": size}), rank)
      for doc in self.documents(rank, counts, drop):
        counts["documents"] += 1
        counts["bytes"] += len(doc.text.encode("utf-8"))
        self.stat_update("documents")
        yield doc
    manifest.write_json(os.path.join(self.counts_dir, f"{rank:05d}.json"), counts)

  def documents(self, rank: int, counts: dict | None = None, drop=None):
    """The usable documents of unit `rank`; drop(id, reason, text, size) receives the rest."""
    counts = counts if counts is not None else {"invalid_utf8_documents": 0, "blank_lines": 0, "unreadable_files": []}
    drop = drop or (lambda *a, **k: None)
    unit = self.units[rank]
    return self._tfds(unit, counts, drop) if "tfds" in unit else self._files(unit, counts, drop)

  def _document(self, value, doc_id, counts, drop, size):
    if not isinstance(value, dict):
      return drop(doc_id, "invalid_json", size=size)
    text = value.get(self.text_field)
    if isinstance(text, bytes):
      text = _repair(text, counts)
    if not isinstance(text, str):
      return drop(doc_id, f"missing_text_field:{self.text_field}", json.dumps(value, default=str)[:1000], size)
    try:
      text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON escapes
      counts["invalid_utf8_documents"] += 1
      text = text.encode("utf-8", errors="replace").decode("utf-8")
    if not text.strip():
      return drop(str(value.get(self.id_field) or doc_id), "empty", size=size)
    own = value.get(self.id_field)
    metadata = {k: value[k] for k in self.keep_fields if value.get(k) is not None}
    return Document(text=text, id=str(own) if own not in (None, "") else doc_id, metadata=metadata)

  def _files(self, unit, counts, drop):
    for path, kind, start, end in unit["pieces"]:
      try:
        if kind == "jsonl":
          yield from self._jsonl(path, start, end, counts, drop)
          continue
        size = os.path.getsize(path)
        with open(path, "rb") as f:
          raw = f.read(self.max_bytes + 1)
        if size > self.max_bytes:
          drop(path, "too_large", raw[:1000].decode("utf-8", errors="replace"), size)
        elif _is_binary(raw, self.binary_ratio):
          drop(path, "binary", size=size)
        elif not raw.strip():
          drop(path, "empty", size=size)
        else:
          yield Document(text=_repair(raw, counts), id=path, metadata={})
      except OSError as e:
        counts["unreadable_files"].append({"path": path, "error": f"{type(e).__name__}: {e}"})

  def _jsonl(self, path, start, end, counts, drop):
    for offset, line, length in _lines(path, start, end, self.max_bytes):
      doc_id = f"{path}@{offset}"
      if line is None:
        drop(doc_id, "too_large", size=length)
        continue
      if not line.strip():
        counts["blank_lines"] += 1
        continue
      try:
        value = json.loads(line)
      except ValueError:
        try:
          value = json.loads(line.decode("utf-8", errors="replace"))
          counts["invalid_utf8_documents"] += 1
        except ValueError:
          drop(doc_id, "invalid_json", line[:1000].decode("utf-8", errors="replace"), length)
          continue
      doc = self._document(value, doc_id, counts, drop, length)
      if doc is not None:
        yield doc

  def _tfds(self, unit, counts, drop):
    source = corpus.tfds_source(unit["tfds"]["name"], unit["tfds"]["split"], unit["tfds"]["data_dir"])
    for index in range(unit["start"], unit["end"]):
      example = source[index]
      value = {k: (v.item() if hasattr(v, "item") and getattr(v, "shape", None) == () else v) for k, v in example.items()}
      if isinstance(value.get(self.id_field), bytes):
        value[self.id_field] = value[self.id_field].decode("utf-8", errors="replace")
      doc = self._document(value, f"tfds:{unit['tfds']['name']}:{unit['tfds']['split']}[{index}]", counts, drop, 0)
      if doc is not None:
        yield doc
