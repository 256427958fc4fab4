"""Continual-pretraining recipes: subsets over epochs (fixed / resampled), source replacement, replay, resume."""

import numpy as np
import pytest

from yijax.data import mixture, pipeline, prepare
from yijax.models.config import ConfigError

TOKENIZER = {"vocab_size": 512, "bos_id": 1, "eos_id": 2, "pad_id": 0}
# source -> (documents, token id range); each source has its own ids, so a token tells its source
SOURCES = {"web": (300, (10, 200)), "code": (120, (200, 300)), "domain": (400, (300, 500))}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("mixture"))
  rng = np.random.default_rng(0)
  for name, (count, ids) in SOURCES.items():
    docs = [rng.integers(*ids, rng.integers(5, 60)).astype(np.int32) for _ in range(count)]
    prepare.write_token_source(out, "train", name, docs, TOKENIZER, num_shards=2)
  return out


def config(out, sources, **fields):
  cfg = pipeline.default_data_config()
  cfg.prepared_dir = out
  cfg.sources = sources
  cfg.packing_bins = 8
  for key, value in fields.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def epoch_documents(dataset, size, epoch):
  return [int(dataset[epoch * size + i]["document"]) for i in range(size)]


@pytest.mark.parametrize("resample", [False, True])
def test_subset_epochs_fixed_or_resampled(prepared, resample):
  cfg = config(prepared, {"domain": 1.0})
  cfg.subsets.domain = {"fraction": 0.25, "resample_each_epoch": resample, "seed": 3}
  mixed = pipeline.train_mixture(cfg, 64, seed=0, process_index=0, process_count=1)
  whole = mixed.plans[0].elements
  size = mixed.subsets["domain"]["elements_per_epoch"]
  assert size == round(0.25 * whole)
  epochs = [epoch_documents(mixed.dataset, size, e) for e in range(3)]
  assert all(len(e) == size for e in epochs)
  first, second, third = (set(e) for e in epochs)
  assert len(first) < 0.35 * len(mixed.plans[0].documents)  # a quarter of the chunks, about a quarter of docs
  if resample:
    assert first != second and second != third  # a new draw every epoch
    assert len(first | second | third) > 1.8 * len(first)
  else:
    assert first == second == third  # the same documents every epoch
    assert epochs[0] != epochs[1]  # in a new order
  again = pipeline.train_mixture(cfg, 64, seed=0, process_index=0, process_count=1)
  assert epoch_documents(again.dataset, size, 1) == epochs[1]  # a function of the seed and the index
  cfg.subsets.domain.seed = 4
  other = pipeline.train_mixture(cfg, 64, seed=0, process_index=0, process_count=1)
  assert set(epoch_documents(other.dataset, size, 0)) != first


def test_subset_by_tokens_and_errors(prepared):
  cfg = config(prepared, {"domain": 1.0})
  cfg.subsets.domain = {"tokens": 3000}
  mixed = pipeline.train_mixture(cfg, 64, seed=0, process_index=0, process_count=1)
  info = mixed.subsets["domain"]
  assert info["tokens_per_epoch"] == pytest.approx(3000, rel=0.05)
  read = sum(len(mixed.dataset[i]["tokens"]) for i in range(info["elements_per_epoch"]))
  assert read == pytest.approx(3000, rel=0.2)
  halves = [pipeline.train_mixture(cfg, 64, seed=0, process_index=p, process_count=2).subsets["domain"]
            for p in (0, 1)]  # each process reads its share of the budget
  assert sum(h["tokens_per_epoch"] for h in halves) == pytest.approx(3000, rel=0.1)
  cfg.subsets.domain = {"tokens": 10**9}
  with pytest.raises(ConfigError, match="data.subsets.domain.tokens"):
    pipeline.train_mixture(cfg, 64, seed=0, process_index=0, process_count=1)
  cfg.subsets.domain = {"tokens": 100, "fraction": 0.5}
  with pytest.raises(ConfigError, match="exactly one of fraction"):
    pipeline.train_mixture(cfg, 64, seed=0, process_index=0, process_count=1)
  cfg = config(prepared, {"domain": 1.0})
  cfg.subsets.web = {"fraction": 0.5}
  with pytest.raises(ConfigError, match="data.subsets.web"):
    pipeline.train_mixture(cfg, 64, seed=0, process_index=0, process_count=1)


def test_replacement_and_replay_weights(prepared):
  cfg = config(prepared, {"web": 0.82, "code": 0.18}, replace_sources=["web"], replace_by="domain")
  assert mixture.resolved_weights(cfg) == pytest.approx({"code": 0.18, "domain": 0.82})
  cfg = config(prepared, {"web": 0.5, "code": 0.3, "domain": 0.2}, replace_sources=["web", "code"],
               replace_by="domain")
  assert mixture.resolved_weights(cfg) == pytest.approx({"domain": 1.0})
  cfg = config(prepared, {"domain": 1.0}, **{"replay.share": 0.1})
  cfg.replay.sources = {"web": 3.0, "code": 1.0}
  assert mixture.resolved_weights(cfg) == pytest.approx({"domain": 0.9, "web": 0.075, "code": 0.025})
  with pytest.raises(ConfigError, match="data.replace_sources"):
    mixture.resolved_weights(config(prepared, {"web": 1.0}, replace_sources=["books"], replace_by="domain"))
  with pytest.raises(ConfigError, match="set both"):
    mixture.resolved_weights(config(prepared, {"web": 1.0}, replace_by="domain"))
  with pytest.raises(ConfigError, match="data.replay.sources"):
    mixture.resolved_weights(config(prepared, {"web": 1.0}, **{"replay.share": 0.1}))


def test_replay_share_in_the_stream(prepared):
  cfg = config(prepared, {"web": 0.82, "code": 0.18}, replace_sources=["web"], replace_by="domain",
               **{"replay.share": 0.1})
  cfg.replay.sources = {"web": 1.0}
  cfg.subsets.domain = {"fraction": 0.3, "resample_each_epoch": True}
  mixed = pipeline.train_mixture(cfg, 64, seed=0, process_index=0, process_count=1)
  assert mixed.token_shares == pytest.approx({"code": 0.162, "domain": 0.738, "web": 0.1})
  tokens = np.zeros(3)
  names = [p.name for p in mixed.plans]
  for i in range(3000):
    element = mixed.dataset[i]
    tokens[element["source"]] += len(element["tokens"])
  shares = dict(zip(names, tokens / tokens.sum()))
  assert shares["web"] == pytest.approx(0.1, abs=0.02)
  assert shares["domain"] == pytest.approx(0.738, abs=0.03)
  assert pipeline.eval_batches(config(prepared, {"domain": 1.0}, eval_split="train"), seq_len=64, batch_size=2,
                               max_batches=1)  # eval reads the resolved sources too


def test_resume_mid_epoch_of_a_resampled_subset(prepared):
  cfg = config(prepared, {"web": 0.5, "domain": 0.5}, **{"prefetch.batches": 0})
  cfg.subsets.domain = {"fraction": 0.1, "resample_each_epoch": True}
  iterator = pipeline.train_iterator(cfg, 64, 4, seed=1, process_index=0, process_count=1)
  for _ in range(7):  # past the first epoch of the small subset
    next(iterator)
  state = pipeline.iterator_state(iterator)
  expected = [next(iterator) for _ in range(5)]
  restored = pipeline.restore_iterator(pipeline.train_iterator(cfg, 64, 4, seed=1, process_index=0,
                                                               process_count=1), state)
  for want, got in zip(expected, (next(restored) for _ in range(5))):
    assert all(np.array_equal(want[k], got[k]) for k in want)


def test_steps_for_epochs():
  assert mixture.steps_for_epochs(10_000, 4, 8, 128, packing_efficiency=1.0) == 40
  with pytest.raises(ConfigError):
    mixture.steps_for_epochs(10_000, 0, 8, 128)
