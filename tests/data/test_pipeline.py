"""Grain pipelines: token-share mixture, packing without loss, determinism, exact resume, upsampling, sharding."""

import json

import grain
import numpy as np
import pytest

from yijax.data import pipeline, prepare
from yijax.models.config import ConfigError

TOKENIZER = {"vocab_size": 512, "bos_id": 1, "eos_id": 2, "pad_id": 0}
THRESHOLD = 64
# source -> (documents, fraction of long documents, token id range); each source has its own ids
SOURCES = {"code": (400, 0.2, (10, 250)), "docs": (150, 0.7, (250, 500))}


def make_documents(name, count, long_fraction, id_range, seed):
  rng = np.random.default_rng(seed)
  long = rng.random(count) < long_fraction
  lengths = np.where(long, rng.integers(THRESHOLD + 1, 400, count), rng.integers(3, THRESHOLD, count))
  return [rng.integers(*id_range, n).astype(np.int32) for n in lengths]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Token-level sources (train + validation) written as a prepared dir, 3 shards each."""
  out = str(tmp_path_factory.mktemp("prepared"))
  docs = {}
  for split, seed in (("train", 0), ("validation", 1)):
    for name, (count, long_fraction, id_range) in SOURCES.items():
      count = count if split == "train" else count // 10
      docs[split, name] = make_documents(name, count, long_fraction, id_range, seed + len(name))
      prepare.write_token_source(out, split, name, docs[split, name], TOKENIZER, num_shards=3)
  return out, docs


def config(prepared_dir, **overrides):
  cfg = pipeline.default_data_config()
  cfg.prepared_dir = prepared_dir
  cfg.sources = {"code": 0.7, "docs": 0.3}
  cfg.packing_bins = 8
  for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_eval_pass_keeps_every_token_and_pads(prepared):
  out, docs = prepared
  cfg = config(out, eval_split="train")
  batches = pipeline.eval_batches(cfg, seq_len=128, batch_size=4)  # eval_split
  expected = np.concatenate([np.concatenate([[1], d, [2]]) for name in ("code", "docs") for d in docs["train", name]])
  tokens = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in batches])
  assert len(tokens) == len(expected)
  assert np.array_equal(np.bincount(tokens, minlength=512), np.bincount(expected, minlength=512))
  for batch in batches:
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: ((4, 128), np.int32) for k in ("tokens", "segment_ids", "positions")}
    for tokens_row, segments, positions in zip(batch["tokens"], batch["segment_ids"], batch["positions"]):
      assert not tokens_row[segments == 0].any() and not positions[segments == 0].any()
      for s in range(1, segments.max() + 1):
        assert np.array_equal(positions[segments == s], np.arange((segments == s).sum()))
  single = pipeline.eval_batches(cfg, "train", 128, 1000)  # one batch, padded with empty rows
  assert len(single) == 1 and single[0]["tokens"].shape == (1000, 128)
  assert (single[0]["segment_ids"].max(axis=1) == 0).sum() > 500
  assert (single[0]["segment_ids"] > 0).sum() == len(expected)
  assert len(pipeline.eval_batches(cfg, "train", 128, 4, 3)) == 3  # (split, seq_len, batch, max_batches)


def test_eval_rows_split_across_processes(prepared):
  out, _ = prepared
  cfg = config(out)
  whole = pipeline.eval_batches(cfg, "validation", 64, 4)
  parts = [pipeline.eval_batches(cfg, "validation", 64, 2, process_index=p, process_count=2) for p in (0, 1)]
  assert len(parts[0]) == len(parts[1]) == len(whole)
  for w, a, b in zip(whole, *parts):
    assert np.array_equal(w["tokens"], np.concatenate([a["tokens"], b["tokens"]]))


def source_token_shares(mixture, elements):
  tokens = np.zeros(len(mixture.plans))
  for i in range(elements):
    element = mixture.dataset[i]
    tokens[element["source"]] += len(element["tokens"])
  return tokens / tokens.sum()


def test_mixture_token_shares(prepared):
  out, _ = prepared
  mixture = pipeline.train_mixture(config(out), seq_len=128, seed=0, process_index=0, process_count=1)
  assert mixture.token_shares == pytest.approx({"code": 0.7, "docs": 0.3})
  assert np.allclose(source_token_shares(mixture, 4000), [0.7, 0.3], atol=0.02)
  # the same shares in the packed batches (no bos/eos, so every token id names its source)
  cfg = config(out, add_bos=False, add_eos=False, sources={"code": 0.2, "docs": 0.8})
  it = pipeline.train_iterator(cfg, seq_len=128, batch_size=4, seed=0, process_index=0, process_count=1)
  tokens = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in take(it, 300)])
  assert abs(np.mean(tokens < 250) - 0.2) < 0.02


def test_same_seed_same_batches(prepared):
  out, _ = prepared
  cfg = config(out)
  make = lambda seed: pipeline.train_iterator(cfg, 128, 4, seed=seed, process_index=0, process_count=1)  # noqa: E731
  first, again, other = take(make(0), 5), take(make(0), 5), take(make(1), 5)
  assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, again))
  assert not all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, other))


def test_restored_state_continues_exactly(prepared):
  out, _ = prepared
  cfg = config(out)
  make = lambda: pipeline.train_iterator(cfg, 128, 2, seed=3, process_index=0, process_count=1)  # noqa: E731
  uninterrupted = take(make(), 12)
  for stop in (3, 5):  # 8 packing bins, 2 rows a batch: states inside a packed round
    it = make()
    take(it, stop)
    state = pipeline.iterator_state(it)
    assert json.loads(json.dumps(state)) == state
    resumed = pipeline.restore_iterator(make(), state)
    for a, b in zip(take(resumed, 12 - stop), uninterrupted[stop:]):
      assert all(np.array_equal(a[k], b[k]) for k in a)


def test_orbax_checkpoint_of_the_iterator(prepared, tmp_path):
  import orbax.checkpoint as ocp

  out, _ = prepared
  cfg = config(out)
  make = lambda: pipeline.train_iterator(cfg, 128, 2, seed=4, process_index=0, process_count=1)  # noqa: E731
  it = make()
  take(it, 7)
  manager = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  manager.save(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = take(it, 4)
  restored = make()
  manager.restore(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
  for a, b in zip(take(restored, 4), expected):
    assert np.array_equal(a["tokens"], b["tokens"])
  manager.close()


def long_token_share(mixture, prepared_docs, elements):
  """Per source: the share of its tokens that come from documents longer than THRESHOLD."""
  long, total = np.zeros(2), np.zeros(2)
  lengths = [np.array([len(d) for d in prepared_docs["train", name]]) for name in ("code", "docs")]
  for i in range(elements):
    element = mixture.dataset[i]
    source = element["source"]
    total[source] += len(element["tokens"])
    long[source] += len(element["tokens"]) * (lengths[source][element["document"]] > THRESHOLD)
  return long / total, total / total.sum()


def expected_long_share(docs, keep_short_prob):
  lengths = np.array([len(d) + 2 for d in docs])
  long = lengths[lengths > THRESHOLD + 2].sum()
  return long / (long + keep_short_prob * lengths[lengths <= THRESHOLD + 2].sum())


def test_per_source_upsampling_keeps_source_shares(prepared):
  out, docs = prepared
  upsampled = {"length_upsampling.mode": "per_source", "length_upsampling.threshold": THRESHOLD,
               "length_upsampling.keep_short_prob": 0.2}
  base = pipeline.train_mixture(config(out), 128, seed=0, process_index=0, process_count=1)
  mixture = pipeline.train_mixture(config(out, **upsampled), 128, seed=0, process_index=0, process_count=1)
  before, _ = long_token_share(base, docs, 3000)
  after, shares = long_token_share(mixture, docs, 3000)
  assert np.allclose(shares, [0.7, 0.3], atol=0.02)
  assert (after > before).all() and after[0] > before[0] + 0.2
  for index, name in enumerate(("code", "docs")):
    assert after[index] == pytest.approx(expected_long_share(docs["train", name], 0.2), abs=0.04)
    assert before[index] == pytest.approx(expected_long_share(docs["train", name], 1.0), abs=0.04)


def test_global_upsampling_moves_source_shares(prepared):
  out, docs = prepared
  cfg = config(out, **{"length_upsampling.mode": "global", "length_upsampling.threshold": THRESHOLD,
                       "length_upsampling.keep_short_prob": 0.2})
  mixture = pipeline.train_mixture(cfg, 128, seed=0, process_index=0, process_count=1)
  kept = {p.name: p.kept_fraction for p in mixture.plans}
  natural = {n: 0.7 * kept["code"] if n == "code" else 0.3 * kept["docs"] for n in kept}
  expected = {n: v / sum(natural.values()) for n, v in natural.items()}
  assert mixture.token_shares == pytest.approx(expected)
  assert kept["docs"] > kept["code"] and expected["docs"] > 0.32  # the long-rich source gains
  _, shares = long_token_share(mixture, docs, 3000)
  assert np.allclose(shares, [expected["code"], expected["docs"]], atol=0.02)


def test_processes_read_disjoint_shards_covering_the_source(prepared):
  out, docs = prepared
  manifest = pipeline.read_manifest(out, "train", ["code"])
  plans = [pipeline.plan_source(manifest, "train", "code", 128, True, True, process_index=p, process_count=2)
           for p in (0, 1)]
  assert set(plans[0].documents).isdisjoint(plans[1].documents)
  assert sorted(np.concatenate([p.documents for p in plans])) == list(range(len(docs["train", "code"])))
  assert not set(plans[0].instructions) & set(plans[1].instructions)
  for plan in plans:  # what a process actually reads over one epoch is exactly its documents
    chunks = pipeline.SourceChunks(plan, 128, 1, 2)
    read = {int(chunks[i]["document"]) for i in range(len(chunks))}
    assert read == set(plan.documents.tolist())
    whole = [chunks[i]["tokens"] for i in range(len(chunks)) if chunks[i]["document"] == plan.documents[0]]
    assert np.array_equal(np.concatenate(whole), np.concatenate([[1], docs["train", "code"][plan.documents[0]], [2]]))
  batches = [next(pipeline.train_iterator(config(out), 128, 2, seed=0, process_index=p, process_count=2))
             for p in (0, 1)]
  assert not np.array_equal(batches[0]["tokens"], batches[1]["tokens"])


def test_manifest_and_config_errors(prepared, tmp_path):
  out, _ = prepared
  with pytest.raises(ConfigError, match="prepared_dir is empty"):
    pipeline.read_manifest("")
  with pytest.raises(ConfigError, match="has no manifest.json.*yijax prepare"):
    pipeline.read_manifest(str(tmp_path / "missing"))
  with pytest.raises(ConfigError, match="'wiki' is not in split 'train'.*available: code, docs"):
    pipeline.train_iterator(config(out, sources={"wiki": 1.0}), 128, 2, 0, 0, 1)
  with pytest.raises(ConfigError, match="data.sources.docs=0.0"):
    pipeline.train_iterator(config(out, sources={"code": 1.0, "docs": 0.0}), 128, 2, 0, 0, 1)
  with pytest.raises(ConfigError, match="length_upsampling.mode='longest'"):
    pipeline.train_iterator(config(out, **{"length_upsampling.mode": "longest"}), 128, 2, 0, 0, 1)
  manifest = pipeline.read_manifest(out)
  pipeline.check_tokenizer(manifest, 512)
  with pytest.raises(ConfigError, match="512 pieces but model.vocab_size=256"):
    pipeline.check_tokenizer(manifest, 256)


def test_logical_shards_make_the_global_batch_independent_of_process_count(prepared):
  """Two logical shards: one process reading both == two processes reading one each."""
  cfg = config(prepared[0], logical_shards=2)
  single = pipeline.train_iterator(cfg, 64, 8, seed=0, process_index=0, process_count=1)
  first = pipeline.train_iterator(cfg, 64, 4, seed=0, process_index=0, process_count=2)
  second = pipeline.train_iterator(cfg, 64, 4, seed=0, process_index=1, process_count=2)
  for _ in range(3):
    whole, a, b = next(single), next(first), next(second)
    for key in whole:
      np.testing.assert_array_equal(whole[key], np.concatenate([a[key], b[key]]))
  state = pipeline.iterator_state(single)
  expected = next(single)
  again = pipeline.restore_iterator(pipeline.train_iterator(cfg, 64, 8, seed=0, process_index=0, process_count=1),
                                    state)
  np.testing.assert_array_equal(next(again)["tokens"], expected["tokens"])
