"""The learned scorers of the cascade, trained before the filtering tasks start.

perplexity   yijax.data.quality.NgramModel (interpolated Kneser-Ney) trained on the reference corpus, over
             hashed lower-cased words (no tokenizer needed); score = log-perplexity in nats per word.
classifier   a fastText supervised model: reference documents (label hq) against a random sample of the
             input (label web), as GPT-3 and Yi train theirs; score = P(hq).
coherence    mean cosine of adjacent paragraphs' content words (yijax.curate.text.coherence); no training.

A keep fraction becomes a threshold on the scores of the calibration sample (documents drawn evenly from
every task's unit before filtering), so every task applies the same fixed threshold.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

import numpy as np

from yijax.curate import text as text_lib
from yijax.data import quality
from yijax.errors import ConfigError, DataError

SCORERS = ("perplexity", "classifier", "coherence")
HIGHER_IS_BETTER = {"perplexity": False, "classifier": True, "coherence": True}


def load(name: str, spec: dict):
  if name == "perplexity":
    return quality.NgramModel.load(spec["path"])
  if name == "classifier":
    return load_fasttext(spec["path"])
  return None


def load_fasttext(path: str):
  import fasttext

  fasttext.FastText.eprint = lambda *a, **k: None  # its load warning about the deprecated API
  return fasttext.load_model(path)


def fasttext_scores(model, text: str, k: int = -1) -> dict[str, float]:
  """{label: probability} (without __label__); calls the C++ predict directly, which works on NumPy 2."""
  pairs = model.f.predict(" ".join(text.split()) + "\n", k, 0.0, "replace")
  return {label.replace("__label__", ""): float(p) for p, label in pairs}


def score(name: str, model, spec: dict, text: str) -> float | None:
  if name == "perplexity":
    ids = text_lib.hashed_words(text, spec["hash_buckets"])
    return float(-np.mean(model.token_log_probs(ids))) if len(ids) else None
  if name == "classifier":
    return fasttext_scores(model, text, k=-1).get("hq", 0.0)
  return text_lib.coherence(text)


def _sample(units_documents, limit: int, seed: int) -> list[str]:
  """Up to `limit` documents spread evenly over the units (reservoir per unit)."""
  per_unit = max(limit // max(len(units_documents), 1), 1)
  rng, texts = random.Random(seed), []
  for documents in units_documents:
    reservoir = []
    for index, doc in enumerate(documents):
      if len(reservoir) < per_unit:
        reservoir.append(doc.text)
      elif (j := rng.randrange(index + 1)) < per_unit:
        reservoir[j] = doc.text
    texts += reservoir
  return texts[:limit]


def _threshold(scores: list[float], keep_fraction: float, higher_is_better: bool) -> float:
  values = np.array([s for s in scores if s is not None], np.float64)
  if not len(values):
    raise DataError("the calibration sample has no scorable documents; set a fixed threshold instead of a keep_fraction")
  q = 1.0 - keep_fraction if higher_is_better else keep_fraction
  return float(np.quantile(values, q))


def _check(cfg, name: str, low_field: str) -> None:
  fraction, fixed = cfg.get("keep_fraction"), cfg.get(low_field)
  if fraction is None and fixed is None:
    raise ConfigError(f"learned.{name}: set learned.{name}.{low_field} or learned.{name}.keep_fraction (or "
                      f"learned.{name}.enabled=False)")
  if fraction is not None and not 0.0 < fraction <= 1.0:
    raise ConfigError(f"learned.{name}.keep_fraction={fraction} must be in (0, 1]")


def prepare(config, units_documents, out_dir: str) -> dict:
  """{scorer: spec (paths, threshold) or {"skipped": why}}; trains what needs training (cached by content)."""
  from yijax.data import manifest

  learned = config.learned
  specs: dict[str, dict] = {}
  reference = [p for p in learned.reference.split(",") if p] if learned.reference else []
  wanted = [n for n in SCORERS if learned[n].enabled]
  for name in SCORERS:
    if not learned[name].enabled:
      specs[name] = {"skipped": f"disabled (learned.{name}.enabled=False)"}
    elif name != "coherence" and not reference:
      specs[name] = {"skipped": "no reference corpus: set --config.learned.reference=FILES (a clean corpus)"}
  active = [n for n in wanted if n not in specs]
  if not active:
    return specs
  for name in active:
    _check(learned[name], name, "max_log_ppl" if name == "perplexity" else "min_score")
  sample = _sample(units_documents, learned.calibration_docs, learned.seed)
  texts = quality.reference_documents(reference, config.input.text_field) if reference else []
  if reference and not texts:
    raise DataError(f"learned.reference={learned.reference} holds no documents")
  digest = hashlib.sha256(json.dumps([learned.to_dict(), len(sample)], sort_keys=True, default=str).encode())
  for t in texts + sample:
    digest.update(t.encode("utf-8", errors="replace"))
  key = digest.hexdigest()[:16]
  model_dir = os.path.join(out_dir, "models")
  os.makedirs(model_dir, exist_ok=True)
  for name in active:
    cfg = learned[name]
    spec = {"hash_buckets": int(learned.perplexity.hash_buckets)}
    if name == "perplexity":
      spec["path"] = os.path.abspath(os.path.join(model_dir, f"ngram-{key}.npz"))
      if not os.path.exists(spec["path"]):
        ids = [text_lib.hashed_words(t, spec["hash_buckets"]) for t in texts]
        quality.NgramModel.train(ids, spec["hash_buckets"], cfg.order).save(spec["path"])
    elif name == "classifier":
      spec["path"] = os.path.abspath(os.path.join(model_dir, f"classifier-{key}.bin"))
      if not os.path.exists(spec["path"]):
        _train_classifier(texts, sample, spec["path"], cfg, learned.seed)
    model = load(name, spec)
    scores = [score(name, model, spec, t) for t in sample]
    low_field = "max_log_ppl" if name == "perplexity" else "min_score"
    threshold = cfg[low_field]
    if cfg.get("keep_fraction") is not None:
      threshold = _threshold(scores, cfg.keep_fraction, HIGHER_IS_BETTER[name])
    spec["min_score" if HIGHER_IS_BETTER[name] else "max_score"] = threshold
    spec["calibration_documents"] = len(sample)
    specs[name] = spec
  manifest.write_json(os.path.join(model_dir, "scorers.json"), specs)
  return specs


def _train_classifier(positives: list[str], negatives: list[str], path: str, cfg, seed: int) -> None:
  import fasttext

  if not negatives:
    raise DataError("the quality classifier needs input documents as negatives; the input sample is empty")
  lines = [f"__label__hq {' '.join(t.split())}" for t in positives]
  lines += [f"__label__web {' '.join(t.split())}" for t in negatives]
  random.Random(seed).shuffle(lines)
  train = path + ".train.txt"
  with open(train, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  model = fasttext.train_supervised(train, epoch=cfg.epoch, lr=cfg.lr, dim=cfg.dim, wordNgrams=cfg.word_ngrams, minCount=1,
                                    bucket=1 << 18, thread=1, seed=seed, verbose=0)
  model.save_model(path + ".tmp")
  os.replace(path + ".tmp", path)
  os.remove(train)
