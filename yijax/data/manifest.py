"""The prepared-data manifest and what it is built from: one module, one writer.

A prepared directory (`yijax prepare --out`, yijax/data/prepare.py) holds OUT/manifest.json: the tokenizer,
and per split and source the shards with their document and token counts, what failed, and (for scored
sources, yijax/data/quality.py) the quality selection. Sources are `SourceSpec`s (files, globs, directories
or one TFDS split). Every shard is finished when its `.done.json` marker exists; `summarize` turns a
source's markers into its manifest entry and `write` writes the manifest (atomically, by rename).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

from yijax.data import corpus, records
from yijax.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "yijax-prepared/1"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TFDS_RE = re.compile(r"^tfds:(?P<name>[^:]+(?::\d+\.\d+\.\d+)?):(?P<split>.+)$")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One named source of one split: files / globs / directories, or one `tfds:NAME:SPLIT`."""
  name: str
  split: str
  inputs: tuple[str, ...]
  text_field: str = "text"
  file_format: str = "auto"  # auto (by suffix: .jsonl/.ndjson/.json = JSONL) | text | jsonl
  tfds_data_dir: str | None = None
  quality: str = ""  # JSON of the quality scorer (yijax/data/quality.py) scoring every document; "" = none

  @property
  def tfds(self) -> re.Match | None:
    return TFDS_RE.match(self.inputs[0]) if len(self.inputs) == 1 else None


def parse_source(value: str, split: str = "train", text_field: str = "text", file_format: str = "auto",
                 tfds_data_dir: str | None = None) -> SourceSpec:
  """`NAME=PATH_OR_GLOB[,PATH...]` or `NAME=tfds:DATASET[/CONFIG][:VERSION]:SPLIT` -> SourceSpec."""
  name, sep, target = value.partition("=")
  if not sep or not name or not target:
    raise DataError(f"--source={value!r}: expected NAME=PATH_OR_GLOB or NAME=tfds:DATASET:SPLIT")
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
    raise DataError(f"--source name {name!r} must use only letters, digits, '_', '.', '-'")
  if file_format not in ("auto", "text", "jsonl"):
    raise DataError(f"--format={file_format!r}: choose auto, text or jsonl")
  if target.startswith("tfds:") and not TFDS_RE.match(target):
    raise DataError(f"--source={value!r}: the tfds form is NAME=tfds:DATASET[/CONFIG][:VERSION]:SPLIT")
  inputs = (target,) if target.startswith("tfds:") else tuple(t for t in target.split(",") if t)
  return SourceSpec(name, split, inputs, text_field, file_format, tfds_data_dir)


def resolve_files(spec: SourceSpec) -> list[str]:
  files = []
  for pattern in spec.inputs:
    if glob.has_magic(pattern):
      matched = sorted(glob.glob(pattern, recursive=True))
      if not matched:
        raise DataError(f"--source={spec.name}={pattern}: the pattern matched no files")
      files += matched
    elif os.path.isdir(pattern):
      files += sorted(os.path.join(d, f) for d, _, fs in os.walk(pattern) for f in fs)
    elif os.path.lexists(pattern):
      files.append(pattern)
    else:
      raise DataError(f"--source={spec.name}={pattern}: no such file or directory")
  return files


def is_jsonl(path: str, file_format: str) -> bool:
  return file_format == "jsonl" or (file_format == "auto" and path.endswith(JSONL_SUFFIXES))


def done_path(shard_path: str) -> str:
  return shard_path[:-len(records.SHARD_SUFFIX)] + ".done.json"


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def write_json(path: str, value) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)


def unit_done(out_dir: str, unit: dict) -> bool:
  shard = os.path.join(out_dir, unit["shard"])
  return all(os.path.exists(p) for p in (done_path(shard), shard, records.lengths_path(shard)))


def summarize(out_dir: str, spec: SourceSpec, units: list[dict], failures: dict) -> dict:
  entry = {"inputs": list(spec.inputs), "text_field": spec.text_field, "units": len(units),
           "finished_units": 0, "shards": [], "failed_units": []}
  totals = corpus.DocumentCounts()
  for unit in units:
    if not unit_done(out_dir, unit):
      if unit["shard"] in failures:
        entry["failed_units"].append({"shard": unit["shard"], "error": failures[unit["shard"]]})
      continue
    counts = read_json(done_path(os.path.join(out_dir, unit["shard"])))
    entry["finished_units"] += 1
    entry["shards"].append({"path": unit["shard"], "documents": counts["documents"], "tokens": counts["tokens"]})
    for name, value in counts.items():
      if name == "max_document_tokens":
        totals[name] = max(totals[name], value)
      elif name in totals:
        totals[name] = totals[name] + value
  totals["bad_line_examples"] = totals["bad_line_examples"][:corpus.MAX_EXAMPLES]
  entry.update(totals)
  entry["complete"] = entry["finished_units"] == len(units)
  return entry


def read(out_dir: str) -> dict | None:
  """OUT/manifest.json as written (None when there is none yet)."""
  path = os.path.join(out_dir, MANIFEST)
  return read_json(path) if os.path.exists(path) else None


def new(tokenizer: dict | None = None) -> dict:
  """An empty manifest."""
  value = {"format": FORMAT, "splits": {}, "corpus_fingerprint": None}
  if tokenizer is not None:
    value["tokenizer"] = dict(tokenizer)
  return value


def write(out_dir: str, value: dict) -> None:
  """The one writer of OUT/manifest.json."""
  write_json(os.path.join(out_dir, MANIFEST), value)
