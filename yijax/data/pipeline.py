"""Grain input pipelines over prepared shards: token-weighted mixture, length upsampling, packing.

Train: per source, the process's contiguous range of documents (kept by the
length filter) is cut into chunks of at most `seq_len` tokens (bos/eos
included, so no token is lost), shuffled per epoch by seed and repeated
forever; the sources are interleaved by grain's deterministic weighted
`MapDataset.mix`, read by a thread pool, first-fit packed into `[seq_len]`
rows (segment ids 1.. per document chunk, 0 = padding; positions restart at
0) and batched. Everything before packing is a pure function of the element
index, so the iterator state is a few integers and restoring it replays the
stream exactly. Subsets over epochs, source replacement and replay (the
continual-pretraining recipes): yijax/data/mixture.py.

Mixture weights are shares of TOKENS. `mix` interleaves elements, so each
source's element weight is its token weight divided by its mean element
length (after chunking, bos/eos and the length filter): share_s / mean_len_s.
Grain rounds element weights to integers with the smallest at 100, so a
share can be off by up to 1% of itself.

Length upsampling (Fu et al. 2024, "Data Engineering for Scaling Language
Models to 128K Context"): documents longer than `threshold` tokens are
always kept and shorter ones with probability `keep_short_prob` (a fixed draw
per seed, source and document). `per_source`: each source's token share stays
as configured, only its long-document share grows. `global`: the same filter
applied to the mixed stream, so source s keeps the fraction r_s of its
tokens and its share becomes w_s * r_s (renormalized): sources rich in long
documents gain. With natural weights (w_s proportional to tokens) this is the
natural post-filter token count of each source.

A prepared dir may be a gs:// URL (a study's data stage on GCS): it is read
through a local copy in the cache (`local_copy`), since ArrayRecord shards are
read with local file APIs.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import threading
import weakref
import zlib
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np

from yijax.data import mixture, records
from yijax.data.manifest import MANIFEST  # noqa: F401 - the one definition, re-exported
from yijax.errors import ConfigError, DataError

UPSAMPLING_MODES = mixture.UPSAMPLING_MODES


def default_data_config() -> ml_collections.ConfigDict:
  """The `data` section of a run config; every field is documented here."""
  c = ml_collections.ConfigDict()
  c.prepared_dir = ""  # `yijax prepare --out` directory (holds manifest.json)
  c.sources = {"python_code": 0.7, "python_docs": 0.3}  # source -> share of TOKENS in the train mixture
  c.split = "train"  # split the train iterator reads
  # logical data shards, each its own stream of batch/shards rows; processes take equal groups of them,
  # so the global batch does not depend on the process count (0 = one shard per process)
  c.logical_shards = 0
  c.eval_split = "validation"  # split eval_batches reads (never part of the train mixture)
  c.add_bos = True  # prepend the tokenizer's bos (manifest) to every document
  c.add_eos = True  # append its eos
  c.shuffle_seed = 0  # combined with the run seed: change the data order without changing the init
  c.packing_bins = 64  # rows first-fit packing fills at once; more = less padding (on the embedded
  # corpus at seq_len 4096: 4 bins pad 12% of the slots, 64 bins 2%); at least batch_size is used
  c.prefetch = ml_collections.ConfigDict()
  c.prefetch.read_threads = 2  # threads reading and chunking documents (grain ReadOptions.num_threads)
  c.prefetch.read_buffer = 256  # documents read ahead (ReadOptions.prefetch_buffer_size)
  c.prefetch.batches = 2  # packed batches prepared ahead by a background thread (0 = none)
  c.length_upsampling = ml_collections.ConfigDict()
  c.length_upsampling.mode = "none"  # none | per_source | global (see the module docstring)
  c.length_upsampling.threshold = 4096  # documents with more tokens than this count as long
  c.length_upsampling.keep_short_prob = 0.5  # probability a short document is kept
  mixture.add_config_fields(c)  # subsets over epochs, source replacement, replay (yijax/data/mixture.py)
  return c


# ---------------------------------------------------------------- manifest


def read_manifest(prepared_dir: str, split: str | None = None, sources: Sequence[str] = ()) -> dict:
  """The manifest of a prepared dir (local, or gs:// read through local_copy; manifest["root"] is the local
  directory the shards are read from); an error names the fix if it is missing, incomplete or lacks a source."""
  from yijax import paths

  if not prepared_dir:
    raise ConfigError("data.prepared_dir is empty; set it to the --out directory of `yijax prepare`")
  if not paths.isfile(paths.join(prepared_dir, MANIFEST)):
    raise ConfigError(f"data.prepared_dir={prepared_dir} has no {MANIFEST}; prepare data first, e.g. "
                      f"`yijax prepare --source=embedded --tokenizer=TOK --out={prepared_dir}`")
  root = local_copy(prepared_dir)
  manifest = paths.read_json(os.path.join(root, MANIFEST), "the prepared data's manifest")
  manifest["root"] = root
  if split is None:
    return manifest
  available = manifest.get("splits", {}).get(split, {})
  for name in sources:
    if name not in available:
      raise ConfigError(f"source {name!r} is not in split {split!r} of {prepared_dir}; available: "
                        f"{', '.join(available_sources(manifest, split)) or 'none'} "
                        f"(splits: {', '.join(sorted(manifest['splits']))})")
    if not available[name].get("complete"):
      raise ConfigError(f"{prepared_dir}: {split}/{name} is incomplete (an interrupted or failed `yijax prepare`); "
                        "rerun the same prepare command to finish it")
    missing = [shard["path"] for shard in available[name].get("shards", [])
               if not os.path.isfile(os.path.join(root, shard["path"]))]
    if missing:
      raise ConfigError(f"{prepared_dir}: {split}/{name} lists {len(missing)} shard file(s) that are missing "
                        f"({missing[0]}{', ...' if len(missing) > 1 else ''}); the prepared data was moved or "
                        "partly deleted: copy it whole, or prepare it again")
  return manifest


def local_copy(prepared_dir: str) -> str:
  """A local prepared dir as it is; a gs:// one copied into $YIJAX_CACHE_DIR (default ~/.cache/yijax)/
  remote-prepared/<hash of the URL>, once, and again whenever its manifest changes (a file lock keeps the
  processes of a host from copying it twice)."""
  import fcntl
  import hashlib
  import shutil

  from yijax import paths

  if not paths.is_url(prepared_dir):
    return prepared_dir
  remote_manifest = paths.read_text(paths.join(prepared_dir, MANIFEST))
  cache = os.path.join(os.environ.get("YIJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "yijax"),
                       "remote-prepared")
  local = os.path.join(cache, hashlib.sha256(prepared_dir.encode()).hexdigest()[:16])
  os.makedirs(cache, exist_ok=True)
  with open(local + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    copied = os.path.join(local, MANIFEST)
    if not (os.path.isfile(copied) and paths.read_text(copied) == remote_manifest):
      partial = local + ".partial"
      shutil.rmtree(partial, ignore_errors=True)
      paths.copy_tree(prepared_dir, partial)
      paths.write_text(os.path.join(partial, MANIFEST), remote_manifest)  # the one compared next time
      shutil.rmtree(local, ignore_errors=True)
      os.replace(partial, local)
  return local


def available_sources(manifest: dict, split: str) -> list[str]:
  """The source names a manifest holds for a split."""
  return sorted(manifest.get("splits", {}).get(split, {}))


def check_tokenizer(manifest: dict, model_vocab_size: int, field: str = "model.vocab_size") -> None:
  """The token ids in the shards must fit the model's embedding table."""
  vocab = manifest["tokenizer"]["vocab_size"]
  if vocab > model_vocab_size:
    raise ConfigError(f"the prepared data's tokenizer ({manifest['tokenizer'].get('path')}) has {vocab} pieces but "
                      f"{field}={model_vocab_size}; set {field}>={vocab} or prepare with a smaller tokenizer")


# ---------------------------------------------------------------- per-source plans


@dataclasses.dataclass
class SourcePlan:
  """What one process reads of one source, computed from the lengths sidecars alone."""
  name: str
  instructions: list[str]  # "shard[a:b]" record ranges of this process, for ArrayRecordDataSource
  documents: np.ndarray  # global record index of each kept document, ascending
  local: np.ndarray  # its index within `instructions`
  lengths: np.ndarray  # its token count (without bos/eos)
  chunk_ends: np.ndarray  # cumulative chunk counts: elements of document i end at chunk_ends[i]
  tokens: int  # tokens per epoch (with bos/eos) for this process
  kept_fraction: float  # kept / all tokens of the source over all processes (the length filter)

  @property
  def elements(self) -> int:
    return int(self.chunk_ends[-1]) if len(self.chunk_ends) else 0


def _seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0])


def _name_id(name: str) -> int:
  return zlib.crc32(name.encode())


def plan_source(manifest: dict, split: str, name: str, seq_len: int, add_bos: bool, add_eos: bool,
                upsampling: Any = None, seed: int = 0, process_index: int = 0, process_count: int = 1) -> SourcePlan:
  """Process `process_index` reads documents [p*N/P, (p+1)*N/P) of the source, filtered and chunked."""
  root = manifest["root"]
  shards = [os.path.join(root, s["path"]) for s in manifest["splits"][split][name]["shards"]]
  per_shard = [records.read_lengths(p) for p in shards]
  lengths = np.concatenate(per_shard) if per_shard else np.zeros(0, np.int32)
  total = len(lengths)
  keep = np.ones(total, bool)
  if upsampling is not None and upsampling.mode != "none":
    draws = np.random.default_rng(_seed(seed, _name_id(name), 17)).random(total, dtype=np.float32)
    keep = (lengths > upsampling.threshold) | (draws < upsampling.keep_short_prob)
  specials = int(add_bos) + int(add_eos)
  keep &= lengths + specials > 0
  all_tokens = (lengths.astype(np.int64) + specials).sum()
  kept_fraction = float((lengths[keep].astype(np.int64) + specials).sum() / max(all_tokens, 1))
  lo, hi = process_index * total // process_count, (process_index + 1) * total // process_count
  starts = np.concatenate([[0], np.cumsum([len(x) for x in per_shard])]).astype(np.int64)
  instructions = []  # the records lo..hi-1 in order, so a document's local index is its index - lo
  for path, start, count in zip(shards, starts[:-1], (len(x) for x in per_shard)):
    a, b = max(lo, start), min(hi, start + count)
    if a < b:
      instructions.append(f"{path}[{a - start}:{b - start}]")
  documents = np.nonzero(keep[lo:hi])[0].astype(np.int64) + lo
  doc_lengths = lengths[documents].astype(np.int64)
  chunk_counts = -(-(doc_lengths + specials) // seq_len)
  return SourcePlan(name, instructions, documents, documents - lo, doc_lengths.astype(np.int32),
                    np.cumsum(chunk_counts), int((doc_lengths + specials).sum()), kept_fraction)


class SourceChunks(grain.MapDataset):
  """Element i = the i-th chunk (<= seq_len tokens, bos/eos included) of a source plan's documents.

  Reads one record per element; indices wrap around (grain's epoch convention).
  """

  def __init__(self, plan: SourcePlan, seq_len: int, bos_id: int | None, eos_id: int | None, source_id: int = 0):
    super().__init__()
    if plan.elements == 0:
      raise ConfigError(f"source {plan.name!r} has no documents for this process (too few documents for the "
                        "process count, or the length filter keeps none: lower length_upsampling.threshold)")
    self._plan, self._seq_len, self._bos, self._eos, self._source_id = plan, seq_len, bos_id, eos_id, source_id
    self._reader, self._lock = None, threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__, _reader=None)
    state.pop("_lock")
    return state

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock())

  def __len__(self) -> int:
    return self._plan.elements

  def _read(self, local: int) -> bytes:
    if self._reader is None:
      with self._lock:
        if self._reader is None:
          self._reader = grain.sources.ArrayRecordDataSource(self._plan.instructions)
    return self._reader[local]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    plan = self._plan
    element = index % plan.elements
    doc = int(np.searchsorted(plan.chunk_ends, element, side="right"))
    chunk = element - (int(plan.chunk_ends[doc - 1]) if doc else 0)
    bos = int(self._bos is not None)
    length = int(plan.lengths[doc])
    start = chunk * self._seq_len  # in the document with bos/eos: [bos] + tokens + [eos]
    stop = min(start + self._seq_len, bos + length + int(self._eos is not None))
    first, last = max(start - bos, 0), min(stop - bos, length)
    raw = self._read(int(plan.local[doc]))
    parts = [np.frombuffer(raw, "<u4", count=last - first, offset=4 * first).astype(np.int32)]
    if bos and start == 0:
      parts.insert(0, np.array([self._bos], np.int32))
    if self._eos is not None and stop == bos + length + 1:
      parts.append(np.array([self._eos], np.int32))
    tokens = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return {"tokens": tokens, "source": np.int32(self._source_id), "document": np.int64(plan.documents[doc])}

  def __str__(self) -> str:
    return f"SourceChunks({self._plan.name}, {self._plan.elements} chunks)"


# ---------------------------------------------------------------- train


_check = mixture.check  # validates the data section; the resolved {source: share}


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index={process_index} must be in [0, process_count={process_count})")
  return process_index, process_count


def _special_ids(data_cfg, manifest: dict) -> tuple[int | None, int | None]:
  meta = manifest["tokenizer"]
  bos = meta["bos_id"] if data_cfg.add_bos and meta["bos_id"] >= 0 else None
  eos = meta["eos_id"] if data_cfg.add_eos and meta["eos_id"] >= 0 else None
  return bos, eos


@dataclasses.dataclass
class Mixture:
  """The weighted train mixture before packing, with what each source contributes."""
  dataset: grain.MapDataset  # infinite; elements {"tokens", "source", "document"}
  plans: list[SourcePlan]
  token_shares: dict[str, float]  # expected share of the mixture's tokens per source
  element_weights: dict[str, float]  # what grain's mix receives
  subsets: dict[str, dict] = dataclasses.field(default_factory=dict)  # per subset source: its size per epoch


def train_mixture(data_cfg, seq_len: int, seed: int = 0, process_index: int | None = None,
                  process_count: int | None = None) -> Mixture:
  """The shuffled, repeated, token-weighted mixture of the configured sources (one process's share)."""
  weights = _check(data_cfg, seq_len, 1)  # data.sources after data.replace_* and data.replay
  process_index, process_count = _process(process_index, process_count)
  manifest = read_manifest(data_cfg.prepared_dir, data_cfg.split, list(weights))
  bos, eos = _special_ids(data_cfg, manifest)
  base = _seed(seed, data_cfg.shuffle_seed)
  upsampling = data_cfg.length_upsampling
  plans = [plan_source(manifest, data_cfg.split, name, seq_len, bos is not None, eos is not None, upsampling,
                       base, process_index, process_count) for name in weights]
  if upsampling.mode == "global":
    weights = {p.name: weights[p.name] * p.kept_fraction for p in plans}
  total = sum(weights.values())
  shares = {name: w / total for name, w in weights.items()}
  datasets, element_weights, subsets = [], {}, {}
  for source_id, plan in enumerate(plans):
    chunks = SourceChunks(plan, seq_len, bos, eos, source_id)
    stream, subset = mixture.source_stream(chunks, plan, mixture.subset_spec(data_cfg, plan.name),
                                           _seed(base, _name_id(plan.name)), process_count)
    datasets.append(stream)
    if subset:
      subsets[plan.name] = subset
    element_weights[plan.name] = shares[plan.name] / (plan.tokens / plan.elements)
  mixed = grain.MapDataset.mix(datasets, list(element_weights.values())) if len(datasets) > 1 else datasets[0]
  return Mixture(mixed, plans, shares, element_weights, subsets)


def _read_options(data_cfg) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=data_cfg.prefetch.read_threads,
                           prefetch_buffer_size=data_cfg.prefetch.read_buffer)


def _pack_and_batch(ds: grain.IterDataset, seq_len: int, rows: int, bins: int, drop_remainder: bool):
  ds = grain.experimental.FirstFitPackIterDataset(ds, length_struct={"tokens": seq_len}, num_packing_bins=bins,
                                                  shuffle_bins=False)
  return ds.batch(rows, drop_remainder=drop_remainder, batch_fn=_stack_rows)


def _stack_rows(rows: Sequence[dict]) -> dict[str, np.ndarray]:
  return {"tokens": np.stack([r["tokens"] for r in rows]).astype(np.int32, copy=False),
          "segment_ids": np.stack([r["tokens_segment_ids"] for r in rows]),
          "positions": np.stack([r["tokens_positions"] for r in rows])}


def train_iterator(data_cfg, seq_len: int, batch_size: int, seed: int = 0, process_index: int | None = None,
                   process_count: int | None = None) -> grain.DatasetIterator:
  """Endless packed batches {tokens, segment_ids, positions: int32 [batch_size, seq_len]} for this process.

  The stream is determined by (seed, data_cfg.shuffle_seed, the logical
  shards this process owns); `get_state()` / `set_state()` resume it exactly.
  """
  _check(data_cfg, seq_len, batch_size)
  process_index, process_count = _process(process_index, process_count)
  shards = data_cfg.logical_shards or process_count
  if shards % process_count or batch_size % (shards // process_count):
    raise ConfigError(
        f"data.logical_shards={shards} must be a multiple of the {process_count} processes and divide each "
        f"process's {batch_size} rows into equal parts")
  local = shards // process_count
  streams = [_shard_stream(data_cfg, seq_len, batch_size // local, seed, process_index * local + i, shards)
             for i in range(local)]
  ds = streams[0]
  if local > 1:
    ds = grain.experimental.ZipIterDataset(streams).map(
        lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  if data_cfg.prefetch.batches > 0:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data_cfg.prefetch.batches)
  iterator = iter(ds)
  atexit.register(_close_if_alive, weakref.ref(iterator))  # stop its threads before interpreter teardown
  return iterator


def _shard_stream(data_cfg, seq_len: int, rows: int, seed: int, shard: int, shards: int):
  mixed = train_mixture(data_cfg, seq_len, seed, shard, shards)
  ds = mixed.dataset.to_iter_dataset(_read_options(data_cfg))
  return _pack_and_batch(ds, seq_len, rows, max(data_cfg.packing_bins, rows), drop_remainder=True)


def _close_if_alive(ref) -> None:
  iterator = ref()
  if iterator is not None:
    iterator.close()
    # grain 0.2.18's ThreadPrefetchDatasetIterator.close is not idempotent: its __del__ during
    # interpreter teardown would close again and print an AttributeError
    iterator.close = lambda: None


def iterator_state(iterator: grain.DatasetIterator) -> dict:
  """The iterator's position as plain JSON-able data (what grain's orbax handler writes)."""
  return json.loads(json.dumps(iterator.get_state()))


def restore_iterator(iterator: grain.DatasetIterator, state: dict) -> grain.DatasetIterator:
  """Moves a freshly built iterator (same config, seed, process) to a saved position."""
  iterator.set_state(state)
  return iterator


# ---------------------------------------------------------------- eval


def eval_batches(data_cfg, split: str | None = None, seq_len: int | None = None, batch_size: int | None = None,
                 max_batches: int | None = None, *, sources: Sequence[str] | None = None, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """Every document of `split` (default data_cfg.eval_split) once, in order, packed; up to `max_batches`.

  No shuffle, no repeat, no length filter; the last batch is padded with
  segment-0 rows. With several processes, global batches of batch_size *
  process_count rows are built identically everywhere and each process takes
  its rows, so all processes get the same batch count.
  """
  if seq_len is None or batch_size is None:
    raise TypeError("eval_batches needs seq_len and batch_size")
  split = split or data_cfg.eval_split
  resolved = _check(data_cfg, seq_len, batch_size)
  names = list(sources) if sources is not None else list(resolved)
  manifest = read_manifest(data_cfg.prepared_dir, split, names)
  bos, eos = _special_ids(data_cfg, manifest)
  plans = [plan_source(manifest, split, n, seq_len, bos is not None, eos is not None) for n in names]
  ds = grain.MapDataset.concatenate([SourceChunks(p, seq_len, bos, eos, i) for i, p in enumerate(plans)])
  rows = batch_size * process_count
  ds = ds.to_iter_dataset(_read_options(data_cfg))
  batches = []
  iterator = iter(_pack_and_batch(ds, seq_len, rows, max(data_cfg.packing_bins, rows), drop_remainder=False))
  for batch in iterator:
    missing = rows - batch["tokens"].shape[0]
    if missing:
      batch = {k: np.concatenate([v, np.zeros((missing, seq_len), np.int32)]) for k, v in batch.items()}
    batches.append({k: v[process_index * batch_size:(process_index + 1) * batch_size] for k, v in batch.items()})
    if max_batches is not None and len(batches) >= max_batches:
      break
  iterator.close()
  return batches
