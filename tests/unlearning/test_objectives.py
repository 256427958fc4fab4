"""Each unlearning objective against a direct numpy computation on a tiny model and batch."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from yijax import models, sharding
from yijax.data import chunked
from yijax.models.config import ConfigError, ModelConfig
from yijax.train import optimizer as opt_lib, step as step_lib
from yijax.unlearning import objectives

CONFIG = ModelConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     mlp_dim=48, rope_theta=10000.0, max_seq_len=64)
LENGTH = 16
OPTIONS = {"vocab_chunk": 0, "seq_chunk": 8}


@pytest.fixture(scope="module")
def setup():
  params = models.init_params(CONFIG, jax.random.key(0))
  reference = models.init_params(CONFIG, jax.random.key(1))
  rng = np.random.default_rng(0)
  chunks = [rng.integers(0, 61, n).astype(np.int32) for n in (16, 11, 16, 7)]
  batch = chunked.pad_rows(chunks, LENGTH, [-1.0, 1.0, -1.0, 1.0])
  return params, reference, {k: jnp.asarray(v) for k, v in batch.items()}, chunks


def _log_softmax(config, params, batch):
  logits = models.apply(config, params, batch["tokens"], batch["positions"], batch["segment_ids"])
  logits = np.asarray(logits, np.float64)
  top = logits.max(-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def _row_mean_nll(log_probs, chunks, targets_of):
  """Mean over positions 0..n-2 of -log p(target) for each row."""
  return np.array([np.mean([-log_probs[r, t, targets_of(r, t)] for t in range(len(c) - 1)])
                   for r, c in enumerate(chunks)])


def _value(fn, setup, reference=None, **options):
  params, ref, batch, _ = setup
  total, denominator, sums, _ = fn(CONFIG, params, batch, ref if reference else None, {**OPTIONS, **options})
  assert float(denominator) == 4
  return float(total) / float(denominator)


def test_gradient_ascent_and_ascent_descent(setup):
  params, _, batch, chunks = setup
  lp = _log_softmax(CONFIG, params, batch)
  nll = _row_mean_nll(lp, chunks, lambda r, t: chunks[r][t + 1])
  factors = np.array([-1.0, 1.0, -1.0, 1.0])
  assert _value(objectives.gradient_ascent, setup) == pytest.approx(-nll.mean(), rel=1e-5)
  assert _value(objectives.ascent_descent, setup) == pytest.approx((factors * nll).mean(), rel=1e-5)


def test_random_labels_are_uniform_fixed_per_chunk_and_scored(setup):
  params, _, batch, chunks = setup
  targets = np.asarray(objectives.random_targets(batch["tokens"], CONFIG.vocab_size, 3))
  assert targets.min() >= 0 and targets.max() < CONFIG.vocab_size
  swapped = np.asarray(objectives.random_targets(batch["tokens"][::-1], CONFIG.vocab_size, 3))
  np.testing.assert_array_equal(swapped, targets[::-1])  # a function of the chunk, not of its row
  assert not np.array_equal(targets, np.asarray(objectives.random_targets(batch["tokens"], CONFIG.vocab_size, 4)))
  lp = _log_softmax(CONFIG, params, batch)
  expected = _row_mean_nll(lp, chunks, lambda r, t: targets[r, t]).mean()
  assert _value(objectives.random_labels, setup, label_seed=3) == pytest.approx(expected, rel=1e-5)


def _code_adversarial_labels(ref_lp, tokens, chunks):
  """The reference code: labels[j] = argmax of the distribution at j with input_ids[j] removed; the HF
  loss then trains position t toward labels[t + 1]."""
  out = []
  for r, chunk in enumerate(chunks):
    labels = []
    for j in range(len(chunk)):
      logits = ref_lp[r, j].copy()
      logits[tokens[r, j]] = -np.inf
      labels.append(int(np.argmax(logits)))
    out.append(labels)
  return lambda r, t: out[r][t + 1]


@pytest.mark.parametrize("shift", [False, True])
def test_adversarial_labels(setup, shift):
  params, reference, batch, chunks = setup
  ref_lp = _log_softmax(CONFIG, reference, batch)
  tokens = np.asarray(batch["tokens"])
  if shift:
    target_of = _code_adversarial_labels(ref_lp, tokens, chunks)
  else:
    def target_of(r, t):
      wrong = ref_lp[r, t].copy()
      wrong[tokens[r, t + 1]] = -np.inf
      return int(np.argmax(wrong))
  for r, chunk in enumerate(chunks):  # never the true next token in the intended version
    for t in range(len(chunk) - 1):
      assert shift or target_of(r, t) != chunk[t + 1]
  got = np.asarray(objectives.adversarial_targets(CONFIG, reference, batch, shift, seq_chunk=8))
  for r, chunk in enumerate(chunks):
    assert [int(got[r, t]) for t in range(len(chunk) - 1)] == [target_of(r, t) for t in range(len(chunk) - 1)]
  lp = _log_softmax(CONFIG, params, batch)
  expected = _row_mean_nll(lp, chunks, target_of).mean()
  value = _value(objectives.adversarial_labels, setup, reference=True, adversarial_shift=shift)
  assert value == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mask_padding", [False, True])
def test_ascent_kl(setup, mask_padding):
  params, reference, batch, chunks = setup
  lq, lp_ref = _log_softmax(CONFIG, params, batch), _log_softmax(CONFIG, reference, batch)
  nll = _row_mean_nll(lq, chunks, lambda r, t: chunks[r][t + 1])
  cross_entropy = -(np.exp(lp_ref) * lq).sum(-1)  # [rows, length]
  terms = []
  for r, chunk in enumerate(chunks):
    if r % 2 == 0:
      terms.append(-nll[r])
    else:
      positions = len(chunk) if mask_padding else LENGTH  # the code averages over every position
      terms.append(cross_entropy[r, :positions].mean())
  value = _value(objectives.ascent_kl, setup, reference=True, kl_mask_padding=mask_padding)
  assert value == pytest.approx(np.mean(terms), rel=1e-5)


def test_missing_reference_or_factor_names_the_fix(setup):
  params, _, batch, _ = setup
  with pytest.raises(ConfigError, match="train.reference_from"):
    objectives.ascent_kl(CONFIG, params, batch, None, OPTIONS)
  without = {k: v for k, v in batch.items() if k != "factor"}
  with pytest.raises(ConfigError, match="data.chunked"):
    objectives.ascent_descent(CONFIG, params, without, None, OPTIONS)


def test_train_step_with_reference_is_exact_over_microbatches(setup):
  """Per-sequence denominators: 1 or 2 microbatches give the same loss and gradient."""
  _, reference, batch, _ = setup
  opt = ml_collections.ConfigDict(dict(
      lr=1e-2, schedule="constant", warmup_steps=0, warmup_ratio=0.0, min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.0, no_decay=("norm", "embed"), clip_norm=1.0))
  tx, schedule = opt_lib.make_optimizer(opt, 10)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  results = []
  for micro in (1, 2):
    state = step_lib.init_state(CONFIG, tx, mesh, sharding.DEFAULT_RULES, seed=0)
    fn = jax.jit(step_lib.make_train_step(CONFIG, tx, schedule, 0.0, 0, micro,
                                          "yijax.unlearning.objectives:ascent_kl", objective_options={"seq_chunk": 8}))
    new, metrics = fn(state, batch, reference)
    assert float(metrics["denominator"]) == 4
    assert int(new.step) == 1
    results.append((float(metrics["loss"]), float(metrics["grad_norm"]), float(metrics["reference_ce"])))
  np.testing.assert_allclose(results[0], results[1], rtol=1e-5)
