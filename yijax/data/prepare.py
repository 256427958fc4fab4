"""`yijax prepare`: raw text, JSONL or TFDS splits -> token-id ArrayRecord shards + manifest.

Each source is planned into work units (groups of whole text files, line-aligned
byte ranges of JSONL files, index ranges of a TFDS split); every unit is
tokenized by one worker process into its own shard, written under a
temporary name, renamed when complete and followed by a `.done.json` marker
holding the unit's counts. Rerunning the same command skips units with a
marker, so an interrupted job finishes without redoing work, and a killed
run never leaves a shard that counts as finished. Bad input (empty
documents, invalid UTF-8, broken JSON lines, unreadable files) is counted and
reported in `OUT/manifest.json`, never a crash midway. Layout:

  OUT/manifest.json
  OUT/<split>/<source>/plan.json
  OUT/<split>/<source>/shard-00000-of-00004.array_record (+ .lengths.npy, .done.json)
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import time
from typing import Iterable, Sequence

from yijax.data import corpus, quality, records
from yijax.data.manifest import (FORMAT, JSONL_SUFFIXES, MANIFEST, SourceSpec, done_path,  # noqa: F401 - re-exported
                                 is_jsonl, parse_source, read_json, resolve_files, summarize, unit_done, write_json)
from yijax.data import manifest as manifest_lib
from yijax.errors import DataError

_ENCODE_BATCH_BYTES = 4 << 20


# ---------------------------------------------------------------- planning


def _size(path: str) -> int:
  try:
    return os.stat(path).st_size
  except OSError:
    return 0  # the unit that reads it reports the error


def _plan_files(spec: SourceSpec, shard_bytes: int | None, num_workers: int) -> list[dict]:
  files = resolve_files(spec)
  sizes = [_size(p) for p in files]
  if shard_bytes is None:  # about 4 units per worker, within [1 MiB, 256 MiB]
    shard_bytes = min(max(sum(sizes) // (4 * max(num_workers, 1)), 1 << 20), 256 << 20)
  pieces = []  # [path, kind, start, end, size]
  for path, size in zip(files, sizes):
    if is_jsonl(path, spec.file_format) and size > shard_bytes:
      for start in range(0, size, shard_bytes):
        pieces.append([path, "jsonl", start, min(start + shard_bytes, size), min(shard_bytes, size - start)])
    else:
      pieces.append([path, "jsonl" if is_jsonl(path, spec.file_format) else "text", 0, size, size])
  units, current, current_bytes = [], [], 0
  for piece in pieces:
    if current and current_bytes + piece[4] > shard_bytes:
      units.append(current)
      current, current_bytes = [], 0
    current.append(piece[:4])
    current_bytes += piece[4]
  if current or not units:
    units.append(current)
  return [{"pieces": u} for u in units]


def _plan_tfds(spec: SourceSpec, docs_per_shard: int) -> list[dict]:
  match = spec.tfds
  count = len(corpus.tfds_source(match["name"], match["split"], spec.tfds_data_dir))
  ranges = [(s, min(s + docs_per_shard, count)) for s in range(0, count, docs_per_shard)] or [(0, 0)]
  source = {"name": match["name"], "split": match["split"], "data_dir": spec.tfds_data_dir}
  return [{"tfds": source, "start": s, "end": e} for s, e in ranges]


def plan_source(spec: SourceSpec, shard_bytes: int | None = None, num_workers: int = 1,
                tfds_docs_per_shard: int = 100_000) -> list[dict]:
  """The work units of a source, each with its shard's relative path."""
  units = _plan_tfds(spec, tfds_docs_per_shard) if spec.tfds else _plan_files(spec, shard_bytes, num_workers)
  for index, unit in enumerate(units):
    unit.update(split=spec.split, source=spec.name, text_field=spec.text_field,
                shard=f"{spec.split}/{spec.name}/shard-{index:05d}-of-{len(units):05d}{records.SHARD_SUFFIX}")
    if spec.quality:
      unit["quality"] = json.loads(spec.quality)
  return units


# ---------------------------------------------------------------- one unit (runs in a worker)


_TOKENIZERS: dict = {}


def _processor(path: str):
  if path not in _TOKENIZERS:
    from yijax.data.tokenizer import Tokenizer

    _TOKENIZERS[path] = Tokenizer(path).processor
  return _TOKENIZERS[path]


def run_unit(unit: dict, out_dir: str, tokenizer_path: str, encode_threads: int = 1) -> dict:
  """Tokenizes one unit into its shard; writes the done marker last; returns the counts."""
  processor = _processor(tokenizer_path)
  counts, scores = corpus.DocumentCounts(), []
  shard = os.path.join(out_dir, unit["shard"])
  writer = records.ShardWriter(shard)
  documents = (corpus.tfds_documents(unit["tfds"], unit["start"], unit["end"], unit["text_field"], counts)
               if "tfds" in unit else corpus.file_documents(unit["pieces"], unit["text_field"], counts))

  def flush(texts):
    for text, ids in zip(texts, processor.Encode(texts, num_threads=encode_threads)):
      if not ids:
        counts["empty_documents"] += 1
        continue
      writer.write(ids)
      if "quality" in unit:
        scores.append(quality.score(unit["quality"], text, ids))
      counts["documents"] += 1
      counts["tokens"] += len(ids)
      counts["max_document_tokens"] = max(counts["max_document_tokens"], len(ids))

  try:
    batch, batch_bytes = [], 0
    for text in documents:
      batch.append(text)
      batch_bytes += len(text)
      counts["bytes"] += len(text.encode("utf-8"))
      if batch_bytes >= _ENCODE_BATCH_BYTES:
        flush(batch)
        batch, batch_bytes = [], 0
    if batch:
      flush(batch)
  except BaseException:
    writer.abort()
    raise
  writer.commit()
  if "quality" in unit:
    quality.write_scores(shard, scores)
  marker = done_path(shard)
  with open(marker + ".tmp", "w") as f:
    json.dump(dict(counts, shard=unit["shard"]), f)
  os.replace(marker + ".tmp", marker)
  return dict(counts)


# ---------------------------------------------------------------- the job


def _settle_plan(out_dir: str, spec: SourceSpec, tokenizer_sha: str, make_units) -> list[dict]:
  """Reuses the stored plan for the same inputs (so reruns skip finished units), else makes one.

  A different plan over existing finished shards is refused: mixing them would
  silently combine two preparations.
  """
  directory = os.path.join(out_dir, spec.split, spec.name)
  plan_path = os.path.join(directory, "plan.json")
  files = None if spec.tfds else [(p, _size(p)) for p in resolve_files(spec)]
  key = {"inputs": list(spec.inputs), "files": files, "text_field": spec.text_field,
         "format": spec.file_format, "tfds_data_dir": spec.tfds_data_dir, "tokenizer_sha256": tokenizer_sha}
  if spec.quality:
    key["quality"] = json.loads(spec.quality)
  key = json.loads(json.dumps(key))
  if os.path.exists(plan_path):
    stored = read_json(plan_path)
    if stored["key"] == key:
      return stored["units"]
    if any(f.endswith(".done.json") for f in os.listdir(directory)):
      raise DataError(f"{directory} holds shards prepared from other inputs, options or tokenizer; "
                       "rerun with the original flags, or use a new --out (or delete that directory)")
  units = make_units()
  if os.path.isdir(directory):  # stale, unfinished files of an abandoned plan
    for name in os.listdir(directory):
      if name.startswith("shard-"):
        os.remove(os.path.join(directory, name))
  write_json(plan_path, {"key": key, "units": units})
  return units


def _run_pending(pending: list[dict], out_dir: str, tokenizer_path: str, num_workers: int,
                 progress: bool) -> dict[str, str]:
  """Runs units (in worker processes when num_workers > 1); returns {shard: error} of failed ones."""
  from tqdm import tqdm

  failures = {}
  bar = tqdm(total=len(pending), unit="shard", desc="prepare", disable=not progress or None)
  try:
    if num_workers <= 1 or len(pending) <= 1:
      for unit in pending:
        try:
          run_unit(unit, out_dir, tokenizer_path, encode_threads=max(num_workers, 1))
        except Exception as e:  # noqa: BLE001 -- reported in the manifest, the job goes on
          failures[unit["shard"]] = f"{type(e).__name__}: {e}"
        bar.update(1)
      return failures
    context = multiprocessing.get_context("spawn")  # no fork of a parent that may hold threads
    with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(pending)), mp_context=context) as pool:
      futures = {pool.submit(run_unit, u, out_dir, tokenizer_path, 1): u for u in pending}
      try:
        for future in concurrent.futures.as_completed(futures):
          unit = futures[future]
          try:
            future.result()
          except Exception as e:  # noqa: BLE001
            failures[unit["shard"]] = f"{type(e).__name__}: {e}"
          bar.update(1)
      except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return failures
  finally:
    bar.close()


def prepare(specs: Sequence[SourceSpec], tokenizer_path: str, out_dir: str, num_workers: int | None = None,
            shard_bytes: int | None = None, tfds_docs_per_shard: int = 100_000, progress: bool = True,
            corpus_fingerprint: str | None = None, quality_options=None, quality_sources=()) -> dict:
  """Prepares every source (skipping finished units); writes and returns the manifest.

  quality_options (quality.QualityOptions): score the sources named in quality_sources (all when
  empty) and write their best documents up to a token budget as `<name>_hq` (yijax/data/quality.py).
  """
  from yijax import paths
  from yijax.data.tokenizer import Tokenizer

  if not specs:
    raise DataError("nothing to prepare: give at least one --source")
  names = [(s.split, s.name) for s in specs]
  if len(set(names)) != len(names):
    raise DataError(f"a source is given twice for the same split: {sorted(names)}")
  num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
  tokenizer = Tokenizer(tokenizer_path)
  token_meta = dict(tokenizer.meta(), path=paths.resolve(tokenizer.path, "--tokenizer"))
  manifest = manifest_lib.read(out_dir) or manifest_lib.new()
  if manifest.get("tokenizer", token_meta).get("sha256") != tokenizer.checksum:
    raise DataError(f"{out_dir} was prepared with another tokenizer ({manifest['tokenizer']['path']}); "
                     "use the same --tokenizer or a new --out")
  manifest["tokenizer"] = token_meta
  specs = quality.attach(list(specs), quality_options, tokenizer, out_dir, quality_sources)
  if corpus_fingerprint:
    manifest["corpus_fingerprint"] = corpus_fingerprint
  plans = {}
  for spec in specs:
    make = (lambda s=spec: plan_source(s, shard_bytes, num_workers, tfds_docs_per_shard))
    plans[spec] = _settle_plan(out_dir, spec, tokenizer.checksum, make)
    manifest["splits"].setdefault(spec.split, {})[spec.name] = {"complete": False, "units": len(plans[spec])}
  manifest["complete"] = False
  manifest_lib.write(out_dir, manifest)  # a killed run leaves `complete: false` behind
  pending = [u for units in plans.values() for u in units if not unit_done(out_dir, u)]
  started = time.time()
  failures = _run_pending(pending, out_dir, tokenizer.path, num_workers, progress)
  for spec, units in plans.items():
    manifest["splits"][spec.split][spec.name] = summarize(out_dir, spec, units, failures)
    if spec.quality:
      quality.select(out_dir, manifest, spec, quality_options)
  manifest["complete"] = all(e.get("complete") for split in manifest["splits"].values() for e in split.values())
  manifest["last_run"] = {"units_run": len(pending), "units_skipped": sum(map(len, plans.values())) - len(pending),
                          "seconds": round(time.time() - started, 2), "num_workers": num_workers}
  manifest_lib.write(out_dir, manifest)
  return manifest


def embedded_specs(out_dir: str, max_docs: int | None = None) -> tuple[list[SourceSpec], str]:
  """Writes the embedded corpus as JSONL under OUT/embedded_text; its specs (both sources and splits)."""
  paths = corpus.write_jsonl(os.path.join(out_dir, "embedded_text"), max_docs=max_docs)
  specs = [SourceSpec(source, split, (path,), "text", "jsonl") for (source, split), path in paths.items()]
  return specs, corpus.fingerprint()


def prepare_embedded(out_dir: str, vocab_size: int, sample_mb: float = 4.0, num_workers: int | None = None,
                     progress: bool = True) -> dict:
  """OUT/tokenizer (trained on a sample of the embedded train split) + both splits prepared; rerunnable.

  The zero-argument default data of a run: a second call reuses the
  tokenizer and skips every finished unit.
  """
  from yijax.data.tokenizer import MODEL_FILE, Tokenizer, train_tokenizer

  tokenizer_dir = os.path.join(out_dir, "tokenizer")
  if os.path.exists(os.path.join(tokenizer_dir, MODEL_FILE)):
    tokenizer = Tokenizer(tokenizer_dir)
    if tokenizer.vocab_size != vocab_size:
      raise DataError(f"{tokenizer_dir} holds a {tokenizer.vocab_size}-piece tokenizer, not {vocab_size}; "
                       "use another directory for another vocabulary size")
  else:
    os.makedirs(out_dir, exist_ok=True)
    sample = os.path.join(out_dir, "tokenizer_sample.txt")
    corpus.sample_text(sample, int(sample_mb * 2**20))
    tokenizer = train_tokenizer([sample], vocab_size, tokenizer_dir)
    os.remove(sample)
  specs, fingerprint = embedded_specs(out_dir)
  return prepare(specs, tokenizer.path, out_dir, num_workers=num_workers, progress=progress,
                 corpus_fingerprint=fingerprint)


def write_token_source(out_dir: str, split: str, name: str, documents: Iterable[Sequence[int]],
                       tokenizer: dict, num_shards: int = 1) -> dict:
  """Writes already-tokenized documents (a seeded synthetic generator, a test) as a prepared source.

  `tokenizer` holds vocab_size, bos_id, eos_id and pad_id; an existing
  manifest must agree on them. Returns the updated manifest.
  """
  manifest = manifest_lib.read(out_dir) or manifest_lib.new(tokenizer)
  keys = ("vocab_size", "bos_id", "eos_id", "pad_id")
  if any(manifest["tokenizer"].get(k) != tokenizer.get(k) for k in keys):
    raise DataError(f"{out_dir} holds data of another tokenizer {manifest['tokenizer']}; got {tokenizer}")
  documents = [d for d in documents if len(d)]
  spec = SourceSpec(name, split, ("<token documents>",))
  units = []
  for index in range(num_shards):
    shard = f"{split}/{name}/shard-{index:05d}-of-{num_shards:05d}{records.SHARD_SUFFIX}"
    part = documents[index * len(documents) // num_shards:(index + 1) * len(documents) // num_shards]
    lengths = records.write_shard(os.path.join(out_dir, shard), part)
    counts = corpus.DocumentCounts()
    counts.update(documents=len(part), tokens=int(lengths.sum()), max_document_tokens=int(lengths.max(initial=0)))
    write_json(done_path(os.path.join(out_dir, shard)), dict(counts, shard=shard))
    units.append({"shard": shard})
  manifest["splits"].setdefault(split, {})[name] = summarize(out_dir, spec, units, {})
  manifest["complete"] = all(e.get("complete") for sp in manifest["splits"].values() for e in sp.values())
  manifest_lib.write(out_dir, manifest)
  return manifest
