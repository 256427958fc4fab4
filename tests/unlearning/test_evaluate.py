"""Scoring of evaluation chunks against a direct computation, and the FLOPs of an unlearning run."""

import jax
import numpy as np
import pytest

from yijax import configlib, models
from yijax.eval import mia
from yijax.models import presets
from yijax.models.config import ModelConfig
from yijax.train import flops
from yijax.unlearning import evaluate

CONFIG = ModelConfig(vocab_size=53, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     rope_theta=10000.0, max_seq_len=32)


def test_score_chunks_match_the_model_on_each_chunk_alone():
  params = models.init_params(CONFIG, jax.random.key(0))
  rng = np.random.default_rng(0)
  chunks = [rng.integers(0, 53, n).astype(np.int32) for n in (12, 5, 9)]  # a batch of 2 + a padded one
  scored = mia.score_chunks(CONFIG, params, chunks, 12, batch_size=2)
  assert [len(lp) for lp, _ in scored] == [11, 4, 8]
  for chunk, (log_probs, correct) in zip(chunks, scored):
    n = len(chunk)
    logits = np.asarray(models.apply(CONFIG, params, chunk[None], np.arange(n)[None], np.ones((1, n), np.int32)),
                        np.float64)[0]
    direct = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    np.testing.assert_allclose(log_probs, direct[np.arange(n - 1), chunk[1:]], atol=2e-4)
    np.testing.assert_array_equal(correct, logits[:-1].argmax(-1) == chunk[1:])
  metrics = evaluate.sequence_metrics(scored)
  assert metrics["perplexity"] == pytest.approx(np.exp(np.mean([-lp.mean() for lp, _ in scored])), rel=1e-6)
  assert metrics["tokens"] == 23


def test_run_flops_and_the_paper_ratio():
  model = presets.get("yi_6b")
  per_token = flops.train_flops_per_token(model, 4096)
  assert evaluate.run_flops(model, 4, 680, 4096) == pytest.approx(per_token * 4 * 680 * 4096)
  assert evaluate.run_flops(model, 4, 680, 4096, reference=True) == pytest.approx(per_token * 4 * 680 * 4096 * 4 / 3)
  study = configlib.load_config("experiments/unlearning/config.py:paper")
  retrain = study.stages.report.args.settings.code.retrain_flops  # Yi-6B's 3.1T pretraining tokens
  assert retrain == pytest.approx(3.1e12 * per_token)
  # one epoch over the GitHub forget set at 680 chunks a step: 4 steps for 2,720 chunks
  assert retrain / evaluate.run_flops(model, 4, 680, 4096) == pytest.approx(3.1e12 / (4 * 680 * 4096), rel=1e-6)
