"""The one scoring path (train/scoring.py): the same numbers on one device and on fsdp/tensor, expert and
sequence meshes of 8 CPU devices, with the parameters sharded where they are (no host copy)."""

import jax
import numpy as np
import pytest

from yijax import models, sharding
from yijax.eval import multiple_choice, perplexity
from yijax.eval.tasks import build_task, evaluate_task
from yijax.models.config import ModelConfig
from yijax.train import scoring

DENSE = ModelConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48,
                    rope_theta=10000.0, max_seq_len=64)
MOE = DENSE.replace(num_experts=8, num_experts_per_token=2, num_shared_experts=1, expert_mlp_dim=16,
                    shared_expert_mlp_dim=24, moe_impl="dense")


def _batch(rows=3, length=22, seed=0):
  """Packed rows of two documents and padding; rows and length deliberately not multiples of the shards."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 97, (rows, length)).astype(np.int32)
  segments = np.zeros((rows, length), np.int32)
  segments[:, :9], segments[:, 9:length - 3] = 1, 2
  positions = perplexity.positions_from_segments(segments).astype(np.int32)
  return {"tokens": tokens, "segment_ids": segments, "positions": positions}


def _scores(config, params, scorer):
  batch = _batch()
  sums = scorer.nll_sums(params, batch, np.arange(config.vocab_size) % 3 + 1)
  targets, _ = scoring.host_targets(batch["tokens"], batch["segment_ids"])
  log_probs, greedy = scorer.token_log_probs(params, batch["tokens"], targets, batch["positions"],
                                             batch["segment_ids"])
  mask = np.zeros(batch["tokens"].shape, bool)
  mask[:, 4:11] = True
  continuation, all_greedy = scorer.continuation_sums(params, batch["tokens"], targets, mask)
  return sums, log_probs, greedy, continuation, all_greedy


@pytest.mark.parametrize("config,shape", [
    (DENSE, {"fsdp": 4, "tensor": 2}),
    (DENSE, {"data": 2, "sequence": 4}),  # rows and length sharded: ring attention
    (MOE, {"expert": 4, "fsdp": 2}),
], ids=["fsdp_tensor", "data_sequence", "expert"])
def test_mesh_scores_equal_one_device(config, shape):
  params = models.init_params(config, jax.random.key(0))
  reference = _scores(config, params, scoring.Scorer(config))
  mesh = sharding.make_mesh(shape)
  sharded = jax.device_put(params, models.param_shardings(config, mesh))
  if "data" not in shape:  # parameters sharded (fsdp, tensor, expert), not only the batch
    assert any(len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated
               for leaf in jax.tree.leaves(sharded))
  scorer = scoring.Scorer(config, mesh)
  got = _scores(config, sharded, scorer)
  assert got[0]["tokens"] == reference[0]["tokens"] and got[0]["bytes"] == reference[0]["bytes"]
  np.testing.assert_allclose(got[0]["nll"], reference[0]["nll"], rtol=2e-5)
  np.testing.assert_allclose(got[1], reference[1], rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(got[2], reference[2])
  np.testing.assert_allclose(got[3], reference[3], rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(got[4], reference[4])
  # the library entry points take the same scorer
  one = perplexity.evaluate_perplexity(config, params, [_batch()])
  on_mesh = perplexity.evaluate_perplexity(config, sharded, [_batch()], scorer=scorer)
  np.testing.assert_allclose(on_mesh["loss"], one["loss"], rtol=2e-5)


def test_task_on_a_mesh_and_compiled_once():
  config = DENSE.replace(vocab_size=512)
  params = models.init_params(config, jax.random.key(1))
  mesh = sharding.make_mesh({"fsdp": 8})
  scorer = scoring.Scorer(config, mesh)
  sharded = jax.device_put(params, models.param_shardings(config, mesh))
  task = build_task("induction", 0, None, vocab_size=config.vocab_size, num_sequences=6, span_len=8)
  one = evaluate_task(config, params, None, task, batch_size=4)
  before = dict(scoring.trace_counts)
  on_mesh = evaluate_task(config, sharded, None, task, batch_size=4, scorer=scorer)
  again = evaluate_task(config, sharded, None, task, batch_size=4, scorer=scoring.Scorer(config, mesh))
  assert on_mesh["acc"] == one["acc"] and on_mesh == again
  np.testing.assert_allclose(on_mesh["loss"], one["loss"], rtol=2e-5)
  # one compilation for the mesh, shared by a second Scorer on the same (config, mesh, rules)
  assert scoring.trace_counts["token_log_probs"] - before.get("token_log_probs", 0) == 1
  assert multiple_choice.trace_counts is scoring.trace_counts
