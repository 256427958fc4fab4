"""Optional cluster-level filtering: embed documents, cluster them, report each cluster, drop clusters by id.

Embedding: scikit-learn's HashingVectorizer (word 1-2 grams) -> tf-idf -> TruncatedSVD (`clusters.dim`),
L2-normalized; clustering: KMeans (`clusters.num_clusters`), fitted on up to `clusters.max_docs` documents.
The report lists every cluster with its size, mean learned scores, frequent words and sample ids; rerun with
`--config.clusters.drop=(ID,...)` (a new --out, or the same one after deleting logs/kept and work/final) to
remove those clusters. Every task assigns its own documents with the fitted model.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import pickle

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from yijax.curate import text as text_lib

MODEL = "model.pkl"
SUMMARY = "clusters.json"


def _embedder(dim: int, seed: int):
  from sklearn.decomposition import TruncatedSVD
  from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import Normalizer

  return make_pipeline(HashingVectorizer(n_features=1 << 18, ngram_range=(1, 2), alternate_sign=False, norm=None),
                       TfidfTransformer(), TruncatedSVD(dim, random_state=seed), Normalizer())


class ClusterFit(PipelineStep):
  name = "cluster fit"
  type = "🔢 - CLUSTER"

  def __init__(self, input_folder: str, output_folder: str, config, tasks: int):
    super().__init__()
    self.input_folder, self.output_folder, self.config, self.tasks = input_folder, output_folder, config, tasks

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    from sklearn.cluster import KMeans

    docs = []
    for path in sorted(glob.glob(os.path.join(self.input_folder, "*.jsonl"))):
      with open(path, encoding="utf-8") as f:
        docs += [json.loads(line) for line in f]
    rng = np.random.default_rng(self.config.seed)
    if len(docs) > self.config.max_docs:
      docs = [docs[i] for i in sorted(rng.choice(len(docs), self.config.max_docs, replace=False))]
    os.makedirs(self.output_folder, exist_ok=True)
    texts = [d["text"] for d in docs]
    k = max(1, min(self.config.num_clusters, len(texts)))
    dim = max(1, min(self.config.dim, len(texts) - 1))
    embedder = _embedder(dim, self.config.seed) if len(texts) > 2 else None
    vectors = embedder.fit_transform(texts) if embedder else np.zeros((len(texts), 1))
    kmeans = KMeans(k, n_init=4, random_state=self.config.seed).fit(vectors) if len(texts) else None
    labels = kmeans.labels_ if kmeans is not None else np.zeros(0, int)
    with open(os.path.join(self.output_folder, MODEL), "wb") as f:
      pickle.dump({"embedder": embedder, "kmeans": kmeans}, f)
    summary = []
    for cluster in range(k):
      members = [d for d, label in zip(docs, labels) if label == cluster]
      words = collections.Counter(w.lower() for d in members[:500] for w in text_lib.words(d["text"]) if len(w) >= 5)
      score_names = sorted({s for d in members for s in (d.get("metadata", {}).get("scores") or {})})
      means = {s: float(np.mean([d["metadata"]["scores"][s] for d in members
                                 if d["metadata"].get("scores", {}).get(s) is not None] or [np.nan])) for s in score_names}
      summary.append({"cluster": cluster, "documents": len(members), "mean_scores": means,
                      "top_words": [w for w, _ in words.most_common(8)], "sample_ids": [d["id"] for d in members[:5]]})
    with open(os.path.join(self.output_folder, SUMMARY), "w") as f:
      json.dump({"fitted_documents": len(docs), "clusters": summary}, f, indent=2)


class ClusterFilter(BaseFilter):
  name = "cluster filter"

  def __init__(self, model_folder: str, drop, exclusion_writer=None):
    super().__init__(exclusion_writer)
    self.model_folder, self.drop = model_folder, {int(c) for c in drop}
    self._model = None

  def filter(self, doc):
    if self._model is None:
      with open(os.path.join(self.model_folder, MODEL), "rb") as f:
        self._model = pickle.load(f)
    if self._model["kmeans"] is None:
      return True
    vector = self._model["embedder"].transform([doc.text]) if self._model["embedder"] else np.zeros((1, 1))
    cluster = int(self._model["kmeans"].predict(vector)[0])
    doc.metadata["cluster"] = cluster
    return cluster not in self.drop or (False, f"cluster:{cluster}")
