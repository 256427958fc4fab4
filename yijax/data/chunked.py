"""Unpacked chunked data: every document alone, cut into consecutive fixed-length chunks.

The unlearning recipe of Yao et al. (2024) (reference code yaojin17/Unlearning_LLM)
never packs two documents into one row: each document is tokenized alone and
cut into consecutive `chunk_len`-token chunks, a chunk of fewer than 5 tokens
(a short tail) is dropped, and each chunk is one right-padded row. A row here:

  tokens       int32 [b, s]   the chunk, then 0s
  segment_ids  int32 [b, s]   1 on the chunk, 0 on padding (never a target, never attended)
  positions    int32 [b, s]   0.. along the chunk
  factor       float32 [b, s] the row's loss factor at every position (-1 forget, +1 retain);
                              a [b, s] field shards over the mesh like tokens

The train iterator (`data.chunked`) walks the chunks of `source` in a shuffled
order per epoch; with `paired_source` each of its rows is followed by one
chunk of the paired source (one retain chunk per forget chunk, the paired
stream shuffled and repeated on its own). The whole stream is a function of
(seed, data.shuffle_seed, position), so the iterator state is one integer.
Chunk tables come from the lengths sidecars alone; records are read on demand.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import zlib

import ml_collections
import numpy as np

from yijax.data import records
from yijax.errors import ConfigError, DataError

MIN_TOKENS = 5  # the reference code drops chunks shorter than this


def default_config() -> ml_collections.ConfigDict:
  """The `data.chunked` section of a run config (the chunk length is train.seq_len)."""
  c = ml_collections.ConfigDict()
  c.enabled = False       # True: the train iterator yields single-chunk rows instead of the packed mixture
  c.source = ""           # prepared source (in data.split) whose chunks are the main rows, e.g. "forget"
  c.factor = 1.0          # loss factor of its rows (-1.0 for the forget set of ascent + descent)
  c.paired_source = ""    # "" = none; else one chunk of this source follows each main row, e.g. "retain"
  c.paired_factor = 1.0   # loss factor of the paired rows
  c.num_chunks = 0        # use the first N chunks of `source` (an epoch = N chunks); 0 = all of them
  c.min_tokens = MIN_TOKENS  # chunks with fewer tokens are dropped
  c.shuffle = True        # reshuffle the chunk order every epoch (False: the stored order)
  c.epochs = 0.0          # > 0: train.steps = this many epochs over the chunks, counted when the run starts
  c.save_every_epoch = False  # with epochs: a kept checkpoint at the end of every epoch (a path over training)
  return c


def enabled(data_cfg) -> bool:
  chunked = data_cfg.get("chunked") if hasattr(data_cfg, "get") else None
  return bool(chunked is not None and chunked.get("enabled"))


def chunk_spans(length: int, chunk_len: int, min_tokens: int = MIN_TOKENS) -> list[tuple[int, int]]:
  """(start, size) of the consecutive chunks of a `length`-token document, short chunks dropped."""
  spans = [(start, min(chunk_len, length - start)) for start in range(0, length, chunk_len)]
  return [(start, size) for start, size in spans if size >= min_tokens]


def document_chunks(ids, chunk_len: int, min_tokens: int = MIN_TOKENS) -> list[np.ndarray]:
  """The chunks of one tokenized document (the rule above), as int32 arrays."""
  ids = np.asarray(ids, np.int32)
  return [ids[start:start + size] for start, size in chunk_spans(len(ids), chunk_len, min_tokens)]


def pad_rows(chunks, chunk_len: int, factors=None) -> dict[str, np.ndarray]:
  """Right-padded rows {tokens, segment_ids, positions[, factor]} of chunks of at most chunk_len tokens."""
  rows = len(chunks)
  tokens = np.zeros((rows, chunk_len), np.int32)
  segment_ids = np.zeros((rows, chunk_len), np.int32)
  positions = np.zeros((rows, chunk_len), np.int32)
  for i, chunk in enumerate(chunks):
    n = len(chunk)
    if n > chunk_len:
      raise DataError(f"chunk {i} has {n} tokens, more than chunk_len={chunk_len}")
    tokens[i, :n], segment_ids[i, :n], positions[i, :n] = chunk, 1, np.arange(n)
  batch = {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}
  if factors is not None:
    batch["factor"] = np.repeat(np.asarray(factors, np.float32)[:, None], chunk_len, axis=1)
  return batch


@dataclasses.dataclass
class ChunkTable:
  """The chunks of one prepared source, planned from its lengths sidecars."""
  name: str
  shards: list[str]
  documents: np.ndarray  # global record index of each chunk's document
  starts: np.ndarray     # the chunk's offset in [bos] + document + [eos]
  sizes: np.ndarray      # its token count (min_tokens..chunk_len)
  doc_lengths: np.ndarray  # its document's token count without bos/eos

  def __len__(self) -> int:
    return len(self.sizes)


def plan_chunks(manifest: dict, split: str, name: str, chunk_len: int, add_bos: bool, add_eos: bool,
                min_tokens: int = MIN_TOKENS, num_chunks: int = 0) -> ChunkTable:
  """Every chunk of a source in document order (or the first `num_chunks`, an error if fewer exist)."""
  if name not in manifest.get("splits", {}).get(split, {}):
    raise ConfigError(f"source {name!r} is not in split {split!r} of {manifest.get('root')}; available: "
                      f"{sorted(manifest.get('splits', {}).get(split, {}))}")
  root = manifest["root"]
  shards = [os.path.join(root, s["path"]) for s in manifest["splits"][split][name]["shards"]]
  lengths = np.concatenate([records.read_lengths(p) for p in shards]) if shards else np.zeros(0, np.int32)
  specials = int(add_bos) + int(add_eos)
  documents, starts, sizes = [], [], []
  for doc, length in enumerate(lengths):
    for start, size in chunk_spans(int(length) + specials, chunk_len, min_tokens):
      documents.append(doc)
      starts.append(start)
      sizes.append(size)
  if num_chunks:
    if num_chunks > len(sizes):
      raise ConfigError(f"data.chunked.num_chunks={num_chunks} but source {name!r} ({split}) has only "
                        f"{len(sizes)} chunks of at most {chunk_len} tokens; set num_chunks <= {len(sizes)}")
    documents, starts, sizes = documents[:num_chunks], starts[:num_chunks], sizes[:num_chunks]
  if not sizes:
    raise ConfigError(f"source {name!r} ({split}) has no chunk of at least {min_tokens} tokens")
  documents = np.asarray(documents, np.int64)
  return ChunkTable(name, shards, documents, np.asarray(starts, np.int64), np.asarray(sizes, np.int64),
                    lengths[documents].astype(np.int64))


class ChunkReader:
  """Reads chunk i of a table: the slice of [bos] + document + [eos] (records read on demand)."""

  def __init__(self, table: ChunkTable, bos_id: int | None, eos_id: int | None):
    self.table, self.bos, self.eos = table, bos_id, eos_id
    self._source, self._lock = None, threading.Lock()

  def _record(self, doc: int) -> np.ndarray:
    with self._lock:
      if self._source is None:
        import grain

        self._source = grain.sources.ArrayRecordDataSource(self.table.shards)
      return records.decode_tokens(self._source[doc])

  def __len__(self) -> int:
    return len(self.table)

  def __getitem__(self, i: int) -> np.ndarray:
    t = self.table
    start, size = int(t.starts[i]), int(t.sizes[i])
    bos = int(self.bos is not None)
    first, last = max(start - bos, 0), min(start + size - bos, int(t.doc_lengths[i]))
    parts = [self._record(int(t.documents[i]))[first:last]]
    if bos and start == 0:
      parts.insert(0, np.array([self.bos], np.int32))
    if self.eos is not None and start + size == bos + int(t.doc_lengths[i]) + 1:
      parts.append(np.array([self.eos], np.int32))
    chunk = np.concatenate(parts).astype(np.int32)
    if len(chunk) != size:
      raise DataError(f"source {t.name!r}: document {int(t.documents[i])} is shorter than its lengths sidecar "
                       "says; rerun `yijax prepare` to rebuild the shard")
    return chunk


def special_ids(manifest: dict, add_bos: bool, add_eos: bool) -> tuple[int | None, int | None]:
  meta = manifest["tokenizer"]
  return (meta["bos_id"] if add_bos and meta["bos_id"] >= 0 else None,
          meta["eos_id"] if add_eos and meta["eos_id"] >= 0 else None)


def load_chunks(prepared_dir: str, split: str, source: str, chunk_len: int, add_bos: bool = True,
                add_eos: bool = True, min_tokens: int = MIN_TOKENS, num_chunks: int = 0) -> list[np.ndarray]:
  """Every chunk (or the first num_chunks) of a prepared source, in order (evaluation sets)."""
  from yijax.data import pipeline

  manifest = pipeline.read_manifest(prepared_dir, split, [source])
  bos, eos = special_ids(manifest, add_bos, add_eos)
  table = plan_chunks(manifest, split, source, chunk_len, bos is not None, eos is not None, min_tokens, num_chunks)
  reader = ChunkReader(table, bos, eos)
  return [reader[i] for i in range(len(reader))]


def _seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0])


class _Order:
  """Chunk index of the k-th draw from a source: a fresh permutation per epoch (or the stored order)."""

  def __init__(self, size: int, seed: int, shuffle: bool):
    self.size, self.seed, self.shuffle = size, seed, shuffle
    self._epoch, self._perm = -1, None

  def __call__(self, k: int) -> int:
    epoch, index = divmod(k, self.size)
    if not self.shuffle:
      return index
    if epoch != self._epoch:
      self._epoch, self._perm = epoch, np.random.default_rng(_seed(self.seed, epoch)).permutation(self.size)
    return int(self._perm[index])


class ChunkedIterator:
  """Endless batches of single-chunk rows; this process's rows of each global batch.

  State: {"position": main chunks consumed so far} (what the run checkpoint saves).
  """

  def __init__(self, main: ChunkReader, paired: ChunkReader | None, chunk_len: int, global_rows: int,
               first_row: int, rows: int, factors: tuple[float, float], seed: int, shuffle: bool):
    self.main, self.paired, self.chunk_len = main, paired, chunk_len
    self.global_rows, self.first_row, self.rows = global_rows, first_row, rows
    self.factors = factors
    self.main_order = _Order(len(main), _seed(seed, zlib.crc32(main.table.name.encode())), shuffle)
    self.paired_order = None if paired is None else _Order(
        len(paired), _seed(seed, zlib.crc32(paired.table.name.encode()), 1), shuffle)
    self.position = 0

  @property
  def main_per_batch(self) -> int:
    return self.global_rows // 2 if self.paired is not None else self.global_rows

  def _row(self, r: int) -> tuple[np.ndarray, float]:
    if self.paired is None:
      return self.main[self.main_order(self.position + r)], self.factors[0]
    k = self.position + r // 2
    if r % 2 == 0:
      return self.main[self.main_order(k)], self.factors[0]
    return self.paired[self.paired_order(k)], self.factors[1]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rows = [self._row(r) for r in range(self.first_row, self.first_row + self.rows)]
    self.position += self.main_per_batch
    return pad_rows([c for c, _ in rows], self.chunk_len, [f for _, f in rows])

  def get_state(self) -> dict:
    return {"position": int(self.position)}

  def set_state(self, state: dict) -> None:
    self.position = int(state["position"])

  def epoch_steps(self) -> float:
    """Optimizer steps per pass over the main source."""
    return len(self.main) / self.main_per_batch


def epoch_plan(data_cfg, seq_len: int, global_batch: int) -> dict:
  """{"chunks", "rows_per_step", "steps_per_epoch"} of a `data.chunked` run: an epoch is
  ceil(chunks / rows) steps, so every chunk is read at least once per epoch (the last batch of an epoch
  wraps into the next shuffled pass)."""
  from yijax.data import pipeline

  cfg = data_cfg.chunked
  if not cfg.source:
    raise ConfigError("data.chunked.enabled is set but data.chunked.source is empty; name a prepared source")
  manifest = pipeline.read_manifest(data_cfg.prepared_dir, data_cfg.split, [cfg.source])
  bos, eos = special_ids(manifest, data_cfg.add_bos, data_cfg.add_eos)
  table = plan_chunks(manifest, data_cfg.split, cfg.source, seq_len, bos is not None, eos is not None,
                      int(cfg.min_tokens), int(cfg.num_chunks))
  rows = global_batch // (2 if cfg.paired_source else 1)
  if rows < 1:
    raise ConfigError(f"train.batch_size={global_batch} leaves no row of {cfg.source!r} per step")
  return {"chunks": len(table), "rows_per_step": rows, "steps_per_epoch": -(-len(table) // rows)}


def resolve_epochs(config) -> dict | None:
  """When data.chunked.epochs > 0, sets train.steps to that many epochs over the source's chunks (all of them,
  or num_chunks) from the prepared data, so a run unlearns every chunk of a set whose size is known only
  after tokenization; with data.chunked.save_every_epoch, checkpoint.every_steps and checkpoint.keep_every
  become one epoch (every epoch's model is kept). train.steps must be 0 (or already the resolved value:
  a resumed run). Returns the plan, or None when epochs is not set."""
  data = config.data
  if not enabled(data) or not float(data.chunked.get("epochs", 0.0)):
    return None
  epochs = float(data.chunked.epochs)
  if epochs < 0:
    raise ConfigError(f"data.chunked.epochs={epochs} must be positive (or 0: train.steps counts the steps)")
  if not data.prepared_dir:
    raise ConfigError("data.chunked.epochs counts chunks in data.prepared_dir, which is empty; set it")
  plan = epoch_plan(data, int(config.train.seq_len), int(config.train.batch_size))
  steps = max(1, int(round(epochs * plan["steps_per_epoch"])))
  if config.train.steps and int(config.train.steps) != steps:
    raise ConfigError(f"train.steps={config.train.steps} and data.chunked.epochs={epochs:g} ({steps} steps: "
                      f"{plan['chunks']} chunks, {plan['rows_per_step']} per step) both set the length of the "
                      "run; set train.steps=0")
  with config.unlocked():
    config.train.steps = steps
    if data.chunked.get("save_every_epoch"):
      config.checkpoint.every_steps = plan["steps_per_epoch"]
      config.checkpoint.keep_every = plan["steps_per_epoch"]
  return {**plan, "epochs": epochs, "steps": steps}


def train_iterator(data_cfg, seq_len: int, batch_size: int, seed: int = 0, process_index: int | None = None,
                   process_count: int | None = None) -> ChunkedIterator:
  """The `data.chunked` iterator: batch_size rows per process (the global batch is batch_size x processes)."""
  from yijax.data import pipeline

  cfg = data_cfg.chunked
  if not cfg.source:
    raise ConfigError("data.chunked.enabled is set but data.chunked.source is empty; name a prepared source")
  if process_index is None or process_count is None:
    import jax

    process_index, process_count = jax.process_index(), jax.process_count()
  global_rows = batch_size * process_count
  if cfg.paired_source and global_rows % 2:
    raise ConfigError(f"data.chunked.paired_source={cfg.paired_source!r} pairs every row with one more, so the "
                      f"global batch ({global_rows} rows) must be even")
  names = [cfg.source] + ([cfg.paired_source] if cfg.paired_source else [])
  manifest = pipeline.read_manifest(data_cfg.prepared_dir, data_cfg.split, names)
  bos, eos = special_ids(manifest, data_cfg.add_bos, data_cfg.add_eos)

  def reader(name: str, num_chunks: int) -> ChunkReader:
    table = plan_chunks(manifest, data_cfg.split, name, seq_len, bos is not None, eos is not None,
                        int(cfg.min_tokens), num_chunks)
    return ChunkReader(table, bos, eos)

  main = reader(cfg.source, int(cfg.num_chunks))
  paired = reader(cfg.paired_source, 0) if cfg.paired_source else None
  return ChunkedIterator(main, paired, seq_len, global_rows, process_index * batch_size, batch_size,
                         (float(cfg.factor), float(cfg.paired_factor)), _seed(seed, data_cfg.shuffle_seed),
                         bool(cfg.shuffle))
