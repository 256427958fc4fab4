"""Quality selection for `yijax prepare`: score documents by perplexity under a reference model, keep the best.

Guo et al. (2024) pick their high-quality domain subset with a KenLM model
trained on a clean reference corpus (as CCNet does for web text): documents
with the lowest perplexity are kept up to a token budget. Here the scorer is

  kenlm   a KenLM model file (`--kenlm_model=PATH`, read through the `kenlm`
          Python module; the document text, whitespace-normalized, is scored
          with sentence boundaries, perplexity per word + 1), or
  ngram   an interpolated Kneser-Ney token n-gram model (order 3 by default,
          discount 0.75) trained here on the reference files
          (`--quality_reference=FILES`) tokenized with the prepare tokenizer:
          KenLM's role for references of up to tens of millions of tokens
          (its counts live in numpy arrays, scoring is vectorized).

A document's score is its log-perplexity (mean negative log-likelihood per
token or word, nats); lower is cleaner. Every scored source keeps all its
documents with a `.quality.npy` sidecar per shard (one float32 per record,
like the lengths sidecar), and the lowest-score documents whose tokens fit
`--quality_budget_tokens` are written as the source `<name><suffix>`
(default `<name>_hq`). The manifest holds the scorer, score statistics, the
threshold (the highest kept score) and the kept documents and tokens under
the `quality` key of both sources; `read_scores` returns the per-document
scores of a source in record order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Iterable, Sequence

import numpy as np

from yijax.data import manifest as manifest_lib, records
from yijax.errors import DataError, MissingFileError

SCORES_SUFFIX = ".quality.npy"
NGRAM_DIR = "quality"
_SCORERS: dict = {}


@dataclasses.dataclass
class QualityOptions:
  """What `yijax prepare --quality_*` asks for."""
  reference: Sequence[str] = ()  # clean reference corpus: text files (one document each) or JSONL
  budget_tokens: int = 0  # keep the lowest-perplexity documents up to this many tokens (per source)
  kenlm_model: str = ""  # a KenLM .arpa/.bin model; "" = train the n-gram scorer on `reference`
  order: int = 3  # n-gram order of the built-in scorer
  discount: float = 0.75  # Kneser-Ney absolute discount
  suffix: str = "_hq"  # the selected documents become source <name><suffix>
  text_field: str = "text"  # JSONL field of the reference files

  def check(self) -> None:
    if self.budget_tokens <= 0:
      raise DataError(f"--quality_budget_tokens={self.budget_tokens} must be positive (tokens to keep per source)")
    if not self.kenlm_model and not self.reference:
      raise DataError("quality selection needs a scorer: --quality_reference=FILES (a clean reference corpus "
                       "for the built-in n-gram scorer) or --kenlm_model=PATH")
    if not 1 <= self.order <= 6 or not 0.0 < self.discount < 1.0:
      raise DataError(f"--quality_order={self.order} must be in [1, 6] and the discount {self.discount} in (0, 1)")
    if not self.suffix:
      raise DataError("--quality_suffix must not be empty (the selected source needs its own name)")


# ---------------------------------------------------------------- the n-gram scorer


class NgramModel:
  """Interpolated Kneser-Ney over token ids; id `vocab` is the document-start padding <s>."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.order, self.base = int(arrays["order"]), int(arrays["base"])
    self.discount = float(arrays["discount"])
    self.tables = [(arrays[f"gram_keys_{k}"], arrays[f"gram_counts_{k}"], arrays[f"ctx_keys_{k}"],
                    arrays[f"ctx_totals_{k}"], arrays[f"ctx_types_{k}"]) for k in range(1, self.order + 1)]
    self.arrays = arrays

  @classmethod
  def train(cls, documents: Iterable[Sequence[int]], vocab_size: int, order: int = 3,
            discount: float = 0.75) -> "NgramModel":
    base = vocab_size + 1
    if base ** order >= 2 ** 62:
      raise DataError(f"an order-{order} n-gram over {vocab_size} ids does not fit 64-bit keys; lower the order")
    grams = [_keys(np.asarray(d, np.int64), order, base, order) for d in documents if len(d)]
    if not grams:
      raise DataError("the quality reference corpus holds no tokens; give clean reference documents")
    top, top_counts = np.unique(np.concatenate(grams), return_counts=True)
    arrays = {"order": np.int64(order), "base": np.int64(base), "discount": np.float64(discount)}
    seen = top  # the distinct (k+1)-grams, from the top order down
    for k in range(order, 0, -1):
      if k == order:
        keys, counts = top, top_counts
      else:  # continuation counts: distinct left extensions of each k-gram
        keys, counts = np.unique(seen % base ** k, return_counts=True)
        seen = np.unique(seen % base ** k)
      contexts = keys // base
      ctx_keys, first = np.unique(contexts, return_index=True)
      arrays[f"gram_keys_{k}"], arrays[f"gram_counts_{k}"] = keys, counts.astype(np.int64)
      arrays[f"ctx_keys_{k}"] = ctx_keys
      arrays[f"ctx_totals_{k}"] = np.add.reduceat(counts, first).astype(np.int64)
      arrays[f"ctx_types_{k}"] = np.diff(np.append(first, len(keys))).astype(np.int64)
    return cls(arrays)

  def token_log_probs(self, ids: Sequence[int]) -> np.ndarray:
    """ln p(token_t | previous tokens) for every token of a document."""
    ids = np.asarray(ids, np.int64)
    prob = np.full(len(ids), 1.0 / self.base)
    for k, (keys, counts, ctx_keys, totals, types) in enumerate(self.tables, start=1):
      grams = _keys(ids, k, self.base, self.order)
      count = _lookup(keys, counts, grams)
      total, distinct = _lookup(ctx_keys, totals, grams // self.base), _lookup(ctx_keys, types, grams // self.base)
      safe = np.maximum(total, 1)
      mixed = np.maximum(count - self.discount, 0) / safe + self.discount * distinct / safe * prob
      prob = np.where(total > 0, mixed, prob)
    return np.log(prob)

  def save(self, path: str) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **self.arrays)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "NgramModel":
    with np.load(path) as data:
      return cls({k: data[k] for k in data.files})


def _keys(ids: np.ndarray, k: int, base: int, order: int) -> np.ndarray:
  """Key of the k-gram ending at each token (earlier positions padded with <s> = base - 1)."""
  padded = np.concatenate([np.full(order - 1, base - 1, np.int64), ids])
  start = order - 1 - (k - 1)
  out = np.zeros(len(ids), np.int64)
  for j in range(k):
    out = out * base + padded[start + j:start + j + len(ids)]
  return out


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
  where = np.minimum(np.searchsorted(keys, queries), max(len(keys) - 1, 0))
  found = (keys[where] == queries) if len(keys) else np.zeros(len(queries), bool)
  return np.where(found, values[where] if len(keys) else 0, 0)


# ---------------------------------------------------------------- scorers by reference


def _file_sha(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def reference_documents(paths: Sequence[str], text_field: str = "text") -> list[str]:
  """The reference corpus: text files (one document each) or JSONL (one per line)."""
  from yijax.data import corpus

  spec = manifest_lib.SourceSpec("quality_reference", "train", tuple(paths), text_field)
  files = manifest_lib.resolve_files(spec)
  counts = corpus.DocumentCounts()
  pieces = [[p, "jsonl" if manifest_lib.is_jsonl(p, "auto") else "text", 0, os.path.getsize(p)] for p in files]
  return list(corpus.file_documents(pieces, text_field, counts))


def build_scorer(options: QualityOptions, tokenizer, out_dir: str) -> dict:
  """Trains (or finds) the scorer; returns its reference {kind, path, sha256, ...} for the workers."""
  options.check()
  if options.kenlm_model:
    _kenlm()  # fail now, in the parent, if the module is missing
    if not os.path.isfile(options.kenlm_model):
      raise MissingFileError(f"--kenlm_model={options.kenlm_model} does not exist")
    return {"kind": "kenlm", "path": os.path.abspath(options.kenlm_model), "sha256": _file_sha(options.kenlm_model)}
  texts = reference_documents(options.reference, options.text_field)
  digest = hashlib.sha256(json.dumps([tokenizer.checksum, options.order, options.discount]).encode())
  for text in texts:
    digest.update(text.encode("utf-8"))
  sha = digest.hexdigest()
  path = os.path.join(out_dir, NGRAM_DIR, f"ngram-{sha[:16]}.npz")
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    model = NgramModel.train(tokenizer.encode_batch(texts), tokenizer.vocab_size, options.order, options.discount)
    model.save(path)
  return {"kind": "ngram", "path": os.path.abspath(path), "sha256": sha, "order": options.order,
          "reference_documents": len(texts)}


def _kenlm():
  try:
    import kenlm
  except ImportError:
    raise ImportError("--kenlm_model needs the kenlm Python module, which is not installed: `pip install "
                      "kenlm` (it builds KenLM's C++ code), or drop --kenlm_model and give "
                      "--quality_reference=FILES to use the built-in n-gram scorer") from None
  return kenlm


def load_scorer(ref: dict):
  key = (ref["kind"], ref["path"])
  if key not in _SCORERS:
    _SCORERS[key] = _kenlm().Model(ref["path"]) if ref["kind"] == "kenlm" else NgramModel.load(ref["path"])
  return _SCORERS[key]


def score(ref: dict, text: str, ids: Sequence[int]) -> float:
  """The document's log-perplexity under the scorer (nats per token, or per word + 1 with KenLM)."""
  scorer = load_scorer(ref)
  if ref["kind"] == "kenlm":
    words = " ".join(text.split())
    return -scorer.score(words, bos=True, eos=True) * math.log(10) / (len(words.split()) + 1)
  return float(-np.mean(scorer.token_log_probs(ids))) if len(ids) else float("inf")


def scores_path(shard_path: str) -> str:
  return records.lengths_path(shard_path)[:-len(records.LENGTHS_SUFFIX)] + SCORES_SUFFIX


def write_scores(shard_path: str, scores: Sequence[float]) -> None:
  path = scores_path(shard_path)
  with open(path + ".tmp", "wb") as f:
    np.save(f, np.asarray(scores, np.float32))
  os.replace(path + ".tmp", path)


def read_scores(manifest: dict, split: str, name: str) -> np.ndarray:
  """Per-document scores of a scored source, in record order (float32)."""
  entry = manifest["splits"][split][name]
  paths = [scores_path(os.path.join(manifest["root"], s["path"])) for s in entry["shards"]]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise MissingFileError(f"{split}/{name} has no quality scores ({missing[0]}); prepare it with "
                            "--quality_reference or --kenlm_model")
  return np.concatenate([np.load(p) for p in paths]) if paths else np.zeros(0, np.float32)


# ---------------------------------------------------------------- prepare hooks


def attach(specs: list, options: QualityOptions | None, tokenizer, out_dir: str, names: Sequence[str] = ()) -> list:
  """The specs with the scorer reference set on those to score (`names`, or all when empty)."""
  if options is None:
    return specs
  ref = json.dumps(build_scorer(options, tokenizer, out_dir), sort_keys=True)
  return [dataclasses.replace(s, quality=ref) if not names or s.name in names else s for s in specs]


def selection_mask(scores: np.ndarray, lengths: np.ndarray, budget_tokens: int) -> np.ndarray:
  """True for the lowest-score documents (ties by record order) whose tokens add up to at most the budget."""
  order = np.lexsort((np.arange(len(scores)), scores))
  kept = np.zeros(len(scores), bool)
  kept[order[np.cumsum(np.asarray(lengths, np.int64)[order]) <= budget_tokens]] = True
  return kept


def select(out_dir: str, manifest: dict, spec, options: QualityOptions) -> None:
  """Writes the lowest-score documents of a scored source, up to the budget, as source <name><suffix>.

  Deterministic (ties by record order), so a rerun rewrites the same selection.
  """
  entry = manifest["splits"][spec.split][spec.name]
  if not entry.get("complete"):
    return
  scores = read_scores(dict(manifest, root=out_dir), spec.split, spec.name)
  shard_paths = [os.path.join(out_dir, s["path"]) for s in entry["shards"]]
  lengths = np.concatenate([records.read_lengths(p) for p in shard_paths]).astype(np.int64)
  kept = selection_mask(scores, lengths, options.budget_tokens)
  name = spec.name + options.suffix
  units, start = [], 0
  for index, path in enumerate(shard_paths):
    count = len(records.read_lengths(path))
    keep = kept[start:start + count]
    start += count
    shard = f"{spec.split}/{name}/shard-{index:05d}-of-{len(shard_paths):05d}{records.SHARD_SUFFIX}"
    documents = [d for d, k in zip(records.read_shard(path), keep) if k]
    written = records.write_shard(os.path.join(out_dir, shard), documents)
    counts = {"documents": len(written), "tokens": int(written.sum()), "max_document_tokens": int(written.max(initial=0))}
    manifest_lib.write_json(manifest_lib.done_path(os.path.join(out_dir, shard)), dict(counts, shard=shard))
    units.append({"shard": shard})
  selected = dataclasses.replace(spec, name=name)
  manifest["splits"][spec.split][name] = manifest_lib.summarize(out_dir, selected, units, {})
  finite = scores[np.isfinite(scores)]
  stats = {f"p{q}": float(np.percentile(finite, q)) for q in (0, 10, 50, 90, 100)} if len(finite) else {}
  scorer = json.loads(spec.quality)
  threshold = float(scores[kept].max()) if kept.any() else None
  summary = {"scorer": scorer, "budget_tokens": int(options.budget_tokens), "threshold": threshold,
             "kept_documents": int(kept.sum()), "kept_tokens": int(lengths[kept].sum()),
             "scored_documents": int(len(scores)), "score_percentiles": stats, "score_unit": "log-perplexity (nats)"}
  entry["quality"] = dict(summary, selected_source=name,
                          scores_files=[os.path.relpath(scores_path(p), out_dir) for p in shard_paths])
  manifest["splits"][spec.split][name]["quality"] = dict(summary, selected_from=spec.name)
