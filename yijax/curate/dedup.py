"""Deduplication on datatrove's distributed dedup steps, with a Jaccard check added to MinHash LSH.

exact    datatrove ExactDedup{Signature,FindDedups,Filter} over the normalized text (yijax.curate.text.normalize).
near     datatrove MinhashDedup{Signature,Buckets,Filter}: `bands` LSH bands of `rows` hashes over word
         `shingle_words`-grams. LSH alone unions every pair that collides in one band; here each candidate
         pair's estimated Jaccard (equal fraction of all bands*rows minhashes, saved per task beside the band
         files) must reach `jaccard` before the two are clustered (VerifiedMinhashCluster, union-find).
subdoc   datatrove SentenceDedup over lines: spans of `span_lines` lines seen elsewhere are cut from all but
         one document; documents left too short are removed.
"""

import struct

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.dedup.sentence_dedup import SentDedupConfig
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig

from yijax.curate import text as text_lib


# sha1, not datatrove's default xxhash: xxhash 4 refuses the str shingles datatrove's MinHash hashes
HASH = HashConfig(precision=64, hash_fc="sha1")


def normalized_text(doc) -> bytes:  # datatrove reads the return annotation: no `from __future__ import annotations`
  return text_lib.normalize(doc.text).encode("utf-8")


def exact_config() -> ExactDedupConfig:
  return ExactDedupConfig(content_getter=normalized_text, hash_config=HASH)


def minhash_config(near) -> MinhashConfig:
  return MinhashConfig(n_grams=near.shingle_words, num_buckets=near.bands, hashes_per_bucket=near.rows, seed=near.seed,
                       hash_config=HASH)


def subdoc_config(subdoc) -> SentDedupConfig:
  return SentDedupConfig(n_sentences=subdoc.span_lines, split_sentences=False, min_doc_words=subdoc.min_doc_words,
                         min_num_sentences=subdoc.min_lines, hash_config=HASH)


class VerifiedMinhashSignature(MinhashDedupSignature):
  """datatrove's MinHash signatures, plus every document's full signature in full/<rank>.npz for the Jaccard check."""

  def __init__(self, output_folder, config: MinhashConfig):
    super().__init__(output_folder, config=config, language=text_lib.TOKENIZER)

  def get_signature(self, shingles):
    signature = super().get_signature(shingles)
    self._full[self._current] = np.concatenate([np.asarray(b, np.uint64) for b in signature])
    return signature

  def run(self, data, rank: int = 0, world_size: int = 1):
    self._full, self._current = {}, -1

    def tracked():
      for index, doc in enumerate(data):
        self._current = index
        yield doc

    super().run(tracked(), rank, world_size)
    docs = np.array(sorted(self._full), np.int64)
    rows = np.stack([self._full[d] for d in docs]) if len(docs) else np.zeros((0, self.num_hashes), np.uint64)
    with self.output_folder.open(f"full/{rank:05d}.npz", "wb") as f:
      np.savez(f, docs=docs, signatures=rows)


class VerifiedMinhashCluster(PipelineStep):
  """Union-find over LSH candidate pairs whose estimated Jaccard reaches the threshold; writes datatrove's
  `<task>.remove` files (all but the first document of each cluster) and `pairs.npz` for the report."""

  name = "MinHash clusters (Jaccard-checked)"
  type = "🫂 - DEDUP"

  def __init__(self, signature_folder: str, buckets_folder: str, output_folder: str, config: MinhashConfig,
               jaccard: float):
    super().__init__()
    self.signature_folder, self.buckets_folder, self.output_folder = signature_folder, buckets_folder, output_folder
    self.config, self.jaccard = config, jaccard

  def _signatures(self):
    import glob
    import os

    table = {}
    for path in sorted(glob.glob(os.path.join(self.signature_folder, "full", "*.npz"))):
      task = int(os.path.basename(path).split(".")[0])
      with np.load(path) as data:
        table[task] = (data["docs"], data["signatures"])
    return table

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    import glob
    import os

    table = self._signatures()

    def signature(task, doc):
      docs, rows = table[task]
      return rows[np.searchsorted(docs, doc)]

    parent: dict = {}

    def find(x):
      while parent.get(x, x) != x:
        parent[x] = parent.get(parent[x], parent[x])
        x = parent[x]
      return x

    checked, kept_pairs = set(), []
    for path in sorted(glob.glob(os.path.join(self.buckets_folder, "*.dups"))):
      with open(path, "rb") as f:
        for f1, d1, f2, d2 in read_tuples_from_file(f, "4I"):
          a, b = (f1, d1), (f2, d2)
          if (a, b) in checked:
            continue
          checked.add((a, b))
          estimate = float(np.mean(signature(*a) == signature(*b)))
          self.stat_update("candidate_pairs")
          if estimate < self.jaccard:
            self.stat_update("rejected_pairs")
            continue
          kept_pairs.append((f1, d1, f2, d2, estimate))
          root_a, root_b = find(a), find(b)
          if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)  # the earliest document represents the cluster
    os.makedirs(self.output_folder, exist_ok=True)
    removals: dict[int, list[int]] = {}
    for node in list(parent):
      if find(node) != node:
        removals.setdefault(node[0], []).append(node[1])
    for task, docs in removals.items():
      with open(os.path.join(self.output_folder, f"{task:06d}.remove"), "wb") as f:
        for doc in sorted(docs):
          f.write(struct.pack("<I", doc))
    roots = {node: find(node) for node in parent}
    np.savez(os.path.join(self.output_folder, "pairs.npz"),
             pairs=np.array([p[:4] for p in kept_pairs], np.int64).reshape(-1, 4),
             jaccard=np.array([p[4] for p in kept_pairs], np.float64),
             members=np.array([list(n) + list(r) for n, r in roots.items()], np.int64).reshape(-1, 4),
             candidates=np.int64(len(checked)))
