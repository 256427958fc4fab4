"""Where documents come from: the embedded corpus, and readers of raw text, JSONL and TFDS inputs.

The embedded corpus is text that ships with every Python interpreter, so data exists offline.

Two sources:
  python_docs  the documentation topics of `pydoc_data.topics.topics` (one
               document per topic, id = topic name);
  python_code  the standard library's `.py` files under
               `sysconfig.get_paths()["stdlib"]` (one document per file, id =
               relative path), skipping tests, site-packages, idlelib,
               lib2to3, pydoc_data (it holds the docs source's own text) and
               platform-generated files.

Each document is in `validation` when the top 64 bits of `sha256(id)` put it
in the last `validation_fraction` of the range, else in `train`; the split
depends only on the id, so it is stable across machines and Python versions.
The default pretraining mixture never reads `validation` (studies build
evaluation tasks from it).

Size on CPython 3.11.7 with the default 5% held out: python_docs 79 topics
(76 train / 3 validation, 0.47 MB); python_code 597 files (568 train / 29
validation, 10.3 MB). `python -m yijax.data.corpus` prints the local numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from typing import Iterator, Sequence

from yijax.errors import DataError

SOURCES = ("python_docs", "python_code")
SPLITS = ("train", "validation")
VALIDATION_FRACTION = 0.05
# directory names never walked into (tests, third-party code, IDLE, the 2to3 grammar
# tool, the docs source's own text) and generated files that differ per platform
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
                        "pydoc_data", "__pycache__"})
_SKIP_FILE_PREFIXES = ("_sysconfigdata",)


def _check_source(source: str) -> None:
  if source not in SOURCES:
    raise DataError(f"unknown embedded source {source!r}; choose one of {', '.join(SOURCES)}")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise DataError(f"unknown embedded split {split!r}; choose one of {', '.join(SPLITS)}")


def split_of(doc_id: str, validation_fraction: float = VALIDATION_FRACTION) -> str:
  """`validation` for the ids whose sha256 lands in the last `validation_fraction`, else `train`."""
  if not 0.0 <= validation_fraction < 1.0:
    raise DataError(f"validation_fraction={validation_fraction} must be in [0, 1)")
  top = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big")
  return "validation" if top >= (1.0 - validation_fraction) * 2**64 else "train"


def _stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def _code_paths() -> list[str]:
  """Relative paths of the standard library sources, sorted, '/'-separated."""
  root = _stdlib_root()
  found = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and not d.startswith("config-"))
    for name in files:
      if name.endswith(".py") and not name.startswith(_SKIP_FILE_PREFIXES):
        found.append(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
  return sorted(found)


def _topics() -> dict[str, str]:
  from pydoc_data.topics import topics

  return topics


def document_ids(source: str) -> list[str]:
  """Every document id of a source (both splits), sorted."""
  _check_source(source)
  return sorted(_topics()) if source == "python_docs" else _code_paths()


def read_text(source: str, doc_id: str) -> str:
  if source == "python_docs":
    return _topics()[doc_id]
  with open(os.path.join(_stdlib_root(), doc_id), "rb") as f:
    return f.read().decode("utf-8", errors="replace")


def documents(source: str, split: str = "train",
              validation_fraction: float = VALIDATION_FRACTION) -> Iterator[tuple[str, str]]:
  """(doc_id, text) of one source and split, in sorted id order."""
  _check_source(source)
  _check_split(split)
  for doc_id in document_ids(source):
    if split_of(doc_id, validation_fraction) == split:
      yield doc_id, read_text(source, doc_id)


def fingerprint(validation_fraction: float = VALIDATION_FRACTION) -> str:
  """sha256 of the Python version, the held-out fraction and every source's id list."""
  digest = hashlib.sha256()
  digest.update(f"python {sys.version}\nvalidation_fraction {validation_fraction}\n".encode())
  for source in SOURCES:
    digest.update(f"[{source}]\n".encode())
    for doc_id in document_ids(source):
      digest.update(doc_id.encode("utf-8") + b"\n")
  return digest.hexdigest()


def write_jsonl(out_dir: str, splits: Sequence[str] = SPLITS, max_docs: int | None = None,
                sources: Sequence[str] = SOURCES,
                validation_fraction: float = VALIDATION_FRACTION) -> dict[tuple[str, str], str]:
  """Writes `OUT/<source>.<split>.jsonl` ({"id", "text"} per line); returns {(source, split): path}.

  Files are written to a temporary name and renamed, and skipped when an
  identical file (same fingerprint and max_docs, recorded beside it) exists.
  """
  os.makedirs(out_dir, exist_ok=True)
  stamp = json.dumps({"fingerprint": fingerprint(validation_fraction), "max_docs": max_docs})
  paths = {}
  for source in sources:
    for split in splits:
      _check_split(split)
      path = os.path.join(out_dir, f"{source}.{split}.jsonl")
      paths[(source, split)] = path
      stamp_path = path + ".fingerprint"
      if os.path.exists(path) and os.path.exists(stamp_path) and open(stamp_path).read() == stamp:
        continue
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        for count, (doc_id, text) in enumerate(documents(source, split, validation_fraction)):
          if max_docs is not None and count >= max_docs:
            break
          f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
      os.replace(path + ".tmp", path)
      with open(stamp_path, "w") as f:
        f.write(stamp)
  return paths


def sample_text(path: str, max_bytes: int, split: str = "train",
                validation_fraction: float = VALIDATION_FRACTION) -> int:
  """Writes whole documents of both sources, in sha256(id) order, until `max_bytes`; returns bytes.

  A deterministic, source-mixed sample for tokenizer training (never from
  validation unless asked).
  """
  ids = [(hashlib.sha256(d.encode()).hexdigest(), source, d) for source in SOURCES
         for d in document_ids(source) if split_of(d, validation_fraction) == split]
  written = 0
  with open(path, "w", encoding="utf-8") as f:
    for _, source, doc_id in sorted(ids):
      data = read_text(source, doc_id)
      size = len(data.encode("utf-8"))
      if written and written + size > max_bytes:
        continue
      f.write(data if data.endswith("\n") else data + "\n")
      written += size
      if written >= max_bytes:
        break
  return written


def summary(validation_fraction: float = VALIDATION_FRACTION) -> dict[str, dict[str, dict[str, int]]]:
  """{source: {split: {"documents", "bytes"}}} of this interpreter's corpus."""
  result = {}
  for source in SOURCES:
    result[source] = {}
    for split in SPLITS:
      sizes = [len(t.encode("utf-8")) for _, t in documents(source, split, validation_fraction)]
      result[source][split] = {"documents": len(sizes), "bytes": sum(sizes)}
  return result



# ---------------------------------------------------------------- raw inputs (text, JSONL, TFDS)

MAX_EXAMPLES = 10  # locations of bad lines kept per unit


class DocumentCounts(dict):
  """Counters of one unit of raw input; every skipped or repaired input lands in one of them."""

  def __init__(self):
    super().__init__(documents=0, tokens=0, bytes=0, max_document_tokens=0, empty_documents=0,
                     blank_lines=0, invalid_utf8_documents=0, invalid_json_lines=0,
                     missing_text_field=0, bad_line_examples=[], unreadable_files=[])

  def example(self, where: str) -> None:
    if len(self["bad_line_examples"]) < MAX_EXAMPLES:
      self["bad_line_examples"].append(where)


def _text(value, counts: DocumentCounts, where: str) -> str | None:
  """A document's raw value -> its text, or None (counted) when it is missing or empty.

  Invalid UTF-8 (bytes, or lone surrogates from JSON escapes) is counted and
  kept with U+FFFD in place of the bad bytes.
  """
  if hasattr(value, "item") and getattr(value, "shape", None) == ():
    value = value.item()
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError:
      counts["invalid_utf8_documents"] += 1
      value = value.decode("utf-8", errors="replace")
  elif isinstance(value, str):
    try:
      value.encode("utf-8")
    except UnicodeEncodeError:
      counts["invalid_utf8_documents"] += 1
      value = value.encode("utf-8", errors="replace").decode("utf-8")
  else:
    counts["missing_text_field"] += 1
    counts.example(where)
    return None
  if not value.strip():
    counts["empty_documents"] += 1
    return None
  return value


def jsonl_lines(path: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
  """The lines whose first byte lies in [start, end), with their byte offsets."""
  with open(path, "rb") as f:
    if start > 0:
      f.seek(start - 1)
      f.readline()  # the line holding byte start-1 belongs to the previous range
    offset = f.tell()
    while offset < end:
      line = f.readline()
      if not line:
        return
      yield offset, line
      offset += len(line)


def _jsonl_documents(path: str, start: int, end: int, text_field: str, counts: DocumentCounts) -> Iterator[str]:
  for offset, line in jsonl_lines(path, start, end):
    where = f"{path}@byte{offset}"
    if not line.strip():
      counts["blank_lines"] += 1
      continue
    try:
      value = json.loads(line)
    except ValueError:
      try:  # invalid UTF-8 inside an otherwise valid JSON line: repair, count, keep
        value = json.loads(line.decode("utf-8", errors="replace"))
        counts["invalid_utf8_documents"] += 1
      except ValueError:
        counts["invalid_json_lines"] += 1
        counts.example(where)
        continue
    text = _text(value.get(text_field) if isinstance(value, dict) else None, counts, where)
    if text is not None:
      yield text


def file_documents(pieces: Sequence[Sequence], text_field: str, counts: DocumentCounts) -> Iterator[str]:
  """Documents of [path, "text"|"jsonl", start, end] pieces: a text file is one document, a JSONL line one."""
  for path, kind, start, end in pieces:
    try:
      if kind == "jsonl":
        yield from _jsonl_documents(path, start, end, text_field, counts)
      else:
        with open(path, "rb") as f:
          text = _text(f.read(), counts, path)
        if text is not None:
          yield text
    except OSError as e:
      counts["unreadable_files"].append({"path": path, "error": f"{type(e).__name__}: {e}"})


def tfds_source(name: str, split: str, data_dir: str | None):
  """`tfds.data_source` of an ArrayRecord-format dataset (no TensorFlow), with a one-line error."""
  import tensorflow_datasets as tfds

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001 -- tfds raises many kinds; the first line names the problem
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"cannot open tfds:{name}:{split} in data_dir={data_dir}: {first} "
                     "(it must be an ArrayRecord-format TFDS dataset; pass --tfds_data_dir)") from None


_TFDS_SOURCES: dict = {}


def tfds_documents(spec: dict, start: int, end: int, text_field: str, counts: DocumentCounts) -> Iterator[str]:
  """Documents of examples [start, end) of {"name", "split", "data_dir"}."""
  key = (spec["name"], spec["split"], spec["data_dir"])
  if key not in _TFDS_SOURCES:
    _TFDS_SOURCES[key] = tfds_source(*key)
  source = _TFDS_SOURCES[key]
  for index in range(start, end):
    example = source[index]
    where = f"tfds:{spec['name']}:{spec['split']}[{index}]"
    text = _text(example.get(text_field) if isinstance(example, dict) else None, counts, where)
    if text is not None:
      yield text


if __name__ == "__main__":
  print(json.dumps(summary(), indent=2))
