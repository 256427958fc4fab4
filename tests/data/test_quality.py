"""Quality selection in prepare: an n-gram scorer trained on clean text keeps clean documents, drops corrupted ones."""

import json
import random

import numpy as np
import pytest

from yijax.data import pipeline, prepare, quality, records

NAMES = ["Alda", "Borin", "Cpress", "Dovan", "Elsa", "Fenn", "Garo", "Hale", "Iris", "Jorun"]
CITIES = ["Marlow", "Tessing", "Ubrane", "Valk", "Wendon", "Yarrow"]
JOBS = ["baker", "surveyor", "potter", "clerk", "weaver", "miller"]


def clean(rng):
  name, city, job = rng.choice(NAMES), rng.choice(CITIES), rng.choice(JOBS)
  return (f"{name} was born in {city}. {name} worked as a {job} in {city} for many years. "
          f"People in {city} remember {name} as a careful {job}.")


def corrupt(rng, text):
  kind = rng.choice(["shuffle", "noise", "off_topic"])
  if kind == "shuffle":
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)
  if kind == "noise":
    return "".join(rng.choice("qxzjkv#%&") if rng.random() < 0.3 else c for c in text)
  return "def frobnicate(x):\n    return [y ** 2 for y in range(x) if y % 3]\n" * 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  from yijax.data.tokenizer import train_tokenizer

  root = tmp_path_factory.mktemp("quality")
  rng = random.Random(0)
  docs, corrupted = [], []
  for i in range(300):
    text = clean(rng)
    bad = i % 3 == 0
    docs.append(corrupt(rng, text) if bad else text)
    corrupted.append(bad)
  (root / "domain.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  reference = [clean(random.Random(100 + i)) for i in range(80)]
  (root / "reference.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in reference))
  (root / "sample.txt").write_text("\n".join(docs + reference))
  tokenizer = train_tokenizer([str(root / "sample.txt")], 512, str(root / "tok"))
  return root, tokenizer, np.array(corrupted)


def test_ngram_model_prefers_reference_like_text(corpus):
  _, tokenizer, _ = corpus
  rng = random.Random(1)
  model = quality.NgramModel.train(tokenizer.encode_batch([clean(rng) for _ in range(50)]), tokenizer.vocab_size)
  seen = tokenizer.encode(clean(random.Random(7)))
  log_probs = model.token_log_probs(seen)
  assert log_probs.shape == (len(seen),) and np.all(log_probs < 0)
  shuffled = tokenizer.encode(corrupt(random.Random(3), clean(random.Random(7))))
  assert -log_probs.mean() < -model.token_log_probs(shuffled).mean()
  unseen = model.token_log_probs([5, 6, 7])  # never seen: still a proper (small) probability
  assert np.all(np.isfinite(unseen))


def test_prepare_keeps_the_clean_documents(corpus, tmp_path):
  root, tokenizer, corrupted = corpus
  total = sum(len(ids) for ids in tokenizer.encode_batch(
      [json.loads(line)["text"] for line in (root / "domain.jsonl").read_text().splitlines()]))
  budget = int(0.4 * total)
  options = quality.QualityOptions(reference=(str(root / "reference.jsonl"),), budget_tokens=budget)
  spec = prepare.parse_source(f"domain={root / 'domain.jsonl'}")
  out = str(tmp_path / "prepared")
  manifest = prepare.prepare([spec], tokenizer.path, out, num_workers=1, progress=False, quality_options=options)
  entry, selected = manifest["splits"]["train"]["domain"], manifest["splits"]["train"]["domain_hq"]
  assert selected["complete"] and selected["tokens"] <= budget and selected["tokens"] > 0.9 * budget
  summary = entry["quality"]
  assert summary["selected_source"] == "domain_hq" and summary["scored_documents"] == 300
  assert summary["kept_tokens"] == selected["tokens"] and selected["quality"]["selected_from"] == "domain"
  scores = quality.read_scores(pipeline.read_manifest(out), "train", "domain")
  assert scores.shape == (300,) and np.all(np.isfinite(scores))
  kept = scores <= summary["threshold"]
  assert 0 <= kept.sum() - summary["kept_documents"] <= 3  # documents tied at the threshold may be left out
  assert corrupted[kept].mean() < 0.1 < corrupted.mean()  # corrupted documents go first
  assert np.median(scores[corrupted]) > np.percentile(scores[~corrupted], 90)
  shard = out + "/" + selected["shards"][0]["path"]
  assert len(records.read_shard(shard)) == len(records.read_lengths(shard))
  again = prepare.prepare([spec], tokenizer.path, out, num_workers=1, progress=False, quality_options=options)
  assert again["last_run"]["units_run"] == 0  # resumable: nothing redone, the same selection
  assert again["splits"]["train"]["domain_hq"]["tokens"] == selected["tokens"]


def test_kenlm_missing_and_option_errors(corpus, tmp_path):
  _, tokenizer, _ = corpus
  model = tmp_path / "model.arpa"
  model.write_text("")
  try:
    import kenlm  # noqa: F401
    pytest.skip("kenlm is installed here")
  except ImportError:
    pass
  with pytest.raises(ImportError, match="pip install kenlm"):
    quality.build_scorer(quality.QualityOptions(budget_tokens=10, kenlm_model=str(model)), tokenizer, str(tmp_path))
  with pytest.raises(ValueError, match="--quality_budget_tokens"):
    quality.QualityOptions(reference=("x",)).check()
  with pytest.raises(ValueError, match="--quality_reference"):
    quality.QualityOptions(budget_tokens=5).check()
