"""Continual-pretraining recipes on the train mixture: subsets over epochs, source replacement, replay.

The recipes of Guo et al. (2024, "Efficient Continual Pre-training by
Mitigating the Stability Gap") as data config fields the pipeline reads:

data.subsets.<source> = {fraction, tokens, resample_each_epoch, seed}
  The source's stream reads a subset of its documents per epoch: `fraction`
  of its chunks (0 < fraction <= 1) or about `tokens` tokens (over all
  processes; each reads its share). The subset is the leading documents of
  a seeded permutation of the source's documents, cut at the chunk count,
  so it is a pure function of (seed, epoch). Fixed (resample_each_epoch
  False): the same documents every epoch, reshuffled per epoch.
  Resampled: epoch e draws its own subset from (seed, e), so a run of
  several epochs sees more distinct documents at the same token budget.
  How many epochs a run makes is its token budget over the subset's tokens
  (`steps_for_epochs` sizes a run for E epochs).
data.replace_sources = [names], data.replace_by = name
  The named sources leave the mixture and `replace_by` takes their combined
  share (added to its own share if it is already in the mixture): the
  pretraining-like mixture whose web share becomes domain data.
data.replay.share = s, data.replay.sources = {name: weight}
  After replacement the mixture is scaled to 1 - s and the replay sources
  (pretraining data) fill s, split by their weights.

Every stream stays a function of the element index, so the iterator state
is unchanged in kind and a restored iterator replays the stream exactly.
"""

from __future__ import annotations

import math
import sys
import threading

import grain
import ml_collections
import numpy as np

from yijax.errors import ConfigError, DataError

UPSAMPLING_MODES = ("none", "per_source", "global")


def add_config_fields(c: ml_collections.ConfigDict) -> None:
  """The recipe fields of the `data` section (see the module docstring)."""
  # source -> {"fraction": f | "tokens": n, "resample_each_epoch": bool, "seed": int}: read only a subset
  # of the source per epoch (a fixed one, or a new draw every epoch)
  c.subsets = ml_collections.ConfigDict()
  c.replace_sources = []  # sources of data.sources whose combined share goes to data.replace_by
  c.replace_by = ""  # the source that takes their share ("" = no replacement)
  c.replay = ml_collections.ConfigDict()
  c.replay.share = 0.0  # share of tokens from the replay sources (0 = no replay)
  c.replay.sources = ml_collections.ConfigDict()  # replay source -> weight within the replay share


def _plain(mapping) -> dict:
  if mapping is None:
    return {}
  return mapping.to_dict() if hasattr(mapping, "to_dict") else dict(mapping)


def resolved_weights(data_cfg) -> dict[str, float]:
  """data.sources after replacement and replay: {source: token share}, summing to 1."""
  weights = {name: float(w) for name, w in _plain(data_cfg.sources).items()}
  if not weights:
    raise ConfigError("data.sources is empty; name at least one prepared source with its token share")
  for name, w in weights.items():
    if not w > 0:
      raise ConfigError(f"data.sources.{name}={w}: token shares must be positive (drop the source instead)")
  replaced, by = list(data_cfg.get("replace_sources", []) or []), data_cfg.get("replace_by", "")
  if replaced or by:
    if not replaced or not by:
      raise ConfigError(f"data.replace_sources={replaced} and data.replace_by={by!r}: set both (the sources "
                        "to replace and the source that takes their share) or neither")
    missing = [name for name in replaced if name not in weights]
    if missing:
      raise ConfigError(f"data.replace_sources names {missing}, which are not in data.sources "
                        f"({', '.join(weights)}); name sources of the mixture")
    share = sum(weights.pop(name) for name in replaced)
    weights[by] = weights.get(by, 0.0) + share
  total = sum(weights.values())
  weights = {name: w / total for name, w in weights.items()}
  replay = data_cfg.get("replay")
  share = float(replay.share) if replay is not None else 0.0
  if share:
    if not 0.0 < share < 1.0:
      raise ConfigError(f"data.replay.share={share} must be in [0, 1) (0 = no replay)")
    sources = {name: float(w) for name, w in _plain(replay.sources).items()}
    if not sources or any(not w > 0 for w in sources.values()):
      raise ConfigError(f"data.replay.sources={sources}: give the replay sources with positive weights, "
                        "e.g. {'python_code': 0.7, 'python_docs': 0.3}")
    replay_total = sum(sources.values())
    weights = {name: w * (1.0 - share) for name, w in weights.items()}
    for name, w in sources.items():
      weights[name] = weights.get(name, 0.0) + share * w / replay_total
  return weights


def check(data_cfg, seq_len: int, batch_size: int) -> dict[str, float]:
  """Validates the data section for a run; returns the resolved {source: share}."""
  if seq_len <= 0 or batch_size <= 0:
    raise ConfigError(f"seq_len={seq_len} and batch_size={batch_size} must be positive")
  weights = resolved_weights(data_cfg)
  mode = data_cfg.length_upsampling.mode
  if mode not in UPSAMPLING_MODES:
    raise ConfigError(f"data.length_upsampling.mode={mode!r}; choose one of {', '.join(UPSAMPLING_MODES)}")
  if not 0.0 <= data_cfg.length_upsampling.keep_short_prob <= 1.0:
    raise ConfigError(f"data.length_upsampling.keep_short_prob={data_cfg.length_upsampling.keep_short_prob} "
                      "must be in [0, 1]")
  for name in _plain(data_cfg.get("subsets")):
    if name not in weights:
      raise ConfigError(f"data.subsets.{name}: {name!r} is not a source of the resolved mixture "
                        f"({', '.join(weights)}); drop the subset or add the source")
  return weights


# ---------------------------------------------------------------- subsets


def subset_spec(data_cfg, name: str) -> dict | None:
  """The validated data.subsets.<name> entry, or None when the source is read whole."""
  spec = _plain(data_cfg.get("subsets")).get(name)
  if spec is None:
    return None
  unknown = set(spec) - {"fraction", "tokens", "resample_each_epoch", "seed"}
  if unknown:
    raise ConfigError(f"data.subsets.{name} has unknown field(s) {sorted(unknown)}; "
                      "fields: fraction, tokens, resample_each_epoch, seed")
  fraction, tokens = float(spec.get("fraction", 0) or 0), int(spec.get("tokens", 0) or 0)
  if bool(fraction) == bool(tokens):
    raise ConfigError(f"data.subsets.{name}: give exactly one of fraction (0 < f <= 1) or tokens (> 0); "
                      f"got fraction={fraction}, tokens={tokens}")
  if fraction and not 0.0 < fraction <= 1.0:
    raise ConfigError(f"data.subsets.{name}.fraction={fraction} must be in (0, 1]")
  if tokens < 0:
    raise ConfigError(f"data.subsets.{name}.tokens={tokens} must be positive")
  return {"fraction": fraction, "tokens": tokens, "resample_each_epoch": bool(spec.get("resample_each_epoch")),
          "seed": int(spec.get("seed", 0) or 0)}


def subset_elements(spec: dict, name: str, elements: int, tokens: int, shards: int) -> int:
  """Chunks per epoch of one process's subset (its share of the subset's tokens, at the mean chunk length)."""
  if spec["fraction"]:
    return max(1, int(round(spec["fraction"] * elements)))
  wanted = spec["tokens"] / shards
  if wanted > tokens:
    raise ConfigError(f"data.subsets.{name}.tokens={spec['tokens']} exceeds the source's {tokens * shards:,} "
                      "tokens (with bos/eos); lower it, or drop the subset to read the whole source")
  return max(1, int(round(wanted / (tokens / elements))))


class SubsetChunks(grain.MapDataset):
  """Element i = chunk order_e[i mod size] of the underlying chunks, e = i // size the epoch.

  order_e lists the chunks of the leading documents of a seeded document
  permutation, cut at `size` chunks. Fixed subsets use one permutation (and
  are finite: shuffle and repeat them like a whole source); resampled ones
  draw a permutation per epoch and shuffle within it (infinite).
  """

  def __init__(self, chunks: grain.MapDataset, chunk_ends: np.ndarray, size: int, seed: int, resample: bool):
    super().__init__()
    total = int(chunk_ends[-1])
    if not 0 < size <= total:
      raise DataError(f"a subset of {size} chunks does not fit a source of {total}")
    self._chunks, self._size, self._seed, self._resample = chunks, size, seed, resample
    self._counts = np.diff(np.asarray(chunk_ends, np.int64), prepend=0)
    self._starts = np.asarray(chunk_ends, np.int64) - self._counts
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__, _cache={})
    state.pop("_lock")
    return state

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock())

  def __len__(self) -> int:
    return sys.maxsize if self._resample else self._size

  def order(self, epoch: int) -> np.ndarray:
    """The chunk indices of epoch `epoch`'s subset, in reading order."""
    epoch = epoch if self._resample else 0
    with self._lock:
      if epoch in self._cache:
        return self._cache[epoch]
    rng = np.random.default_rng([self._seed % 2**32, epoch])
    documents = rng.permutation(len(self._counts))
    counts = self._counts[documents]
    needed = int(np.searchsorted(np.cumsum(counts), self._size)) + 1
    documents, counts = documents[:needed], counts[:needed]
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    elements = (np.repeat(self._starts[documents], counts) + offsets)[:self._size]
    if self._resample:
      elements = elements[rng.permutation(self._size)]
    else:
      elements = np.sort(elements)
    with self._lock:
      if len(self._cache) >= 2:
        self._cache.pop(min(self._cache))
      self._cache[epoch] = elements
    return elements

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(int(index), self._size)
    return self._chunks[int(self.order(epoch)[position])]

  def __str__(self) -> str:
    kind = "resampled each epoch" if self._resample else "fixed"
    return f"SubsetChunks({self._size} chunks per epoch, {kind})"


def source_stream(chunks: grain.MapDataset, plan, spec: dict | None, shuffle_seed: int,
                  shards: int) -> tuple[grain.MapDataset, dict | None]:
  """The endless stream of one source (whole, or a subset) and a description of the subset."""
  if spec is None:
    return chunks.shuffle(seed=shuffle_seed).repeat(), None
  size = subset_elements(spec, plan.name, plan.elements, plan.tokens, shards)
  subset = SubsetChunks(chunks, plan.chunk_ends, size, _mix_seed(spec["seed"], shuffle_seed), spec["resample_each_epoch"])
  info = {"elements_per_epoch": size, "tokens_per_epoch": int(round(size * plan.tokens / plan.elements)),
          "fraction_of_source": size / plan.elements, "resample_each_epoch": spec["resample_each_epoch"]}
  if spec["resample_each_epoch"]:
    return subset, info
  return subset.shuffle(seed=shuffle_seed).repeat(), info


def _mix_seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0])


def steps_for_epochs(tokens_per_epoch: int, epochs: float, batch_size: int, seq_len: int,
                     packing_efficiency: float = 0.97) -> int:
  """Optimizer steps that read `epochs` passes over `tokens_per_epoch` (packed rows are ~97% full)."""
  if epochs <= 0 or tokens_per_epoch <= 0:
    raise ConfigError(f"epochs={epochs} and tokens_per_epoch={tokens_per_epoch} must be positive")
  return max(1, int(math.ceil(epochs * tokens_per_epoch / (batch_size * seq_len * packing_efficiency))))
