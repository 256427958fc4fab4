"""Mixture of experts: routers, dispatch paths, losses, layer stacks, bias balancing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax import models
from yijax.models import moe
from yijax.models.config import ConfigError, ModelConfig

MOE = ModelConfig(vocab_size=97, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, mlp_dim=48,
                  rope_theta=10000.0, max_seq_len=64, num_experts=8, num_experts_per_token=2,
                  num_shared_experts=1, expert_mlp_dim=16, shared_expert_mlp_dim=24, first_dense_layers=1)


def _np_route(logits, kind, k, norm=True, scale=1.0, bias=None, groups=1, top_groups=1):
  """A direct numpy reference for each router."""
  logits = np.asarray(logits, np.float64)
  t, e = logits.shape
  softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
  weights, experts = np.zeros((t, k)), np.zeros((t, k), int)
  for i in range(t):
    if kind == "sigmoid":
      scores = 1 / (1 + np.exp(-logits[i]))
      choice = scores + (0 if bias is None else bias)
    else:
      scores = softmax(logits[i])
      choice = logits[i] if kind == "topk_softmax" else scores
    size = e // groups
    group_score = [np.sort(choice[g * size:(g + 1) * size])[-2:].sum() if kind == "sigmoid"
                   else choice[g * size:(g + 1) * size].max() for g in range(groups)]
    allowed = np.full(e, -np.inf)
    for g in np.argsort(group_score)[::-1][:top_groups]:
      allowed[g * size:(g + 1) * size] = 0
    top = np.argsort(-(choice + allowed), kind="stable")[:k]
    experts[i] = top
    if kind == "topk_softmax":
      weights[i] = softmax(logits[i][top])
    else:
      weights[i] = scores[top] / (scores[top].sum() if norm else 1)
  return weights * scale, experts


@pytest.mark.parametrize("kind,norm,groups,top_groups,scale,biased", [
    ("softmax_topk", True, 1, 1, 1.0, False),
    ("softmax_topk", False, 4, 2, 1.0, False),
    ("topk_softmax", True, 1, 1, 1.0, False),
    ("sigmoid", True, 4, 2, 2.5, True),
    ("sigmoid", False, 1, 1, 1.0, False),
])
def test_routers_match_reference(kind, norm, groups, top_groups, scale, biased):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(20, 8)).astype(np.float32)
  bias = rng.normal(size=8).astype(np.float32) if biased else None
  config = MOE.replace(router_type=kind, norm_topk_prob=norm, num_expert_groups=groups,
                       top_expert_groups=top_groups, routed_scaling_factor=scale)
  weights, experts, _ = moe.route(config, jnp.asarray(logits), None if bias is None else jnp.asarray(bias))
  ref_w, ref_e = _np_route(logits, kind, 2, norm, scale, bias, groups, top_groups)
  np.testing.assert_array_equal(np.sort(experts, -1), np.sort(ref_e, -1))
  order = np.argsort(experts, -1)
  np.testing.assert_allclose(np.take_along_axis(np.asarray(weights), order, -1),
                             np.take_along_axis(ref_w, np.argsort(ref_e, -1), -1), rtol=1e-5)


def _expert_inputs(t=24, d=16, e=8, f=12, k=2, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(t, d)), jnp.float32)
  experts = jnp.asarray(np.stack([rng.choice(e, k, replace=False) for _ in range(t)]), jnp.int32)
  weights = jnp.asarray(rng.random((t, k)), jnp.float32)
  params = [jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32) for s in ((e, d, f), (e, d, f), (e, f, d))]
  return x, experts, weights, params


def test_dispatch_paths_agree_with_the_dense_reference():
  x, experts, weights, params = _expert_inputs()
  ref = moe.experts_dense(x, experts, weights, *params)
  np.testing.assert_allclose(moe.experts_ragged(x, experts, weights, *params), ref, rtol=1e-5, atol=1e-5)
  roomy, dropped = moe.experts_capacity(x, experts, weights, *params, capacity_factor=8.0)
  assert float(dropped) == 0.0
  np.testing.assert_allclose(roomy, ref, rtol=1e-5, atol=1e-5)

  def grads(fn):
    return jax.grad(lambda x, w, *p: jnp.sum(jnp.sin(fn(x, experts, w, *p))), argnums=(0, 1, 2, 3, 4))(
        x, weights, *params)

  for a, b in zip(grads(moe.experts_ragged), grads(moe.experts_dense)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_capacity_drops_overflow_and_reports_it():
  x, _, weights, params = _expert_inputs()
  crowded = jnp.zeros((24, 2), jnp.int32).at[:, 1].set(1)  # every token wants experts 0 and 1
  y, dropped = moe.experts_capacity(x, crowded, weights, *params, capacity_factor=1.0)
  # capacity = ceil(24*2/8) = 6 slots per expert: 12 of 48 copies kept
  assert float(dropped) == pytest.approx(1 - 12 / 48)
  kept = moe.experts_dense(x[:6], crowded[:6], weights[:6], *params)
  np.testing.assert_allclose(y[:6], kept, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(y[6:]).max()) == 0.0


def test_balance_and_z_losses():
  e = 4
  experts = jnp.asarray([[0, 1], [2, 3], [0, 1], [2, 3]])
  probs = jnp.full((4, e), 0.25)
  mask = jnp.ones(4)
  assert float(moe.load_balance_loss(probs, experts, mask, e)) == pytest.approx(1.0)
  skewed = jnp.asarray([[0, 1]] * 4)
  skewed_probs = jnp.asarray([[0.5, 0.5, 0, 0]] * 4)
  assert float(moe.load_balance_loss(skewed_probs, skewed, mask, e)) == pytest.approx(2.0)
  # padding does not count; the sequence variant averages rows
  padded = moe.load_balance_loss(skewed_probs, skewed, jnp.asarray([1.0, 1.0, 0.0, 0.0]), e)
  assert float(padded) == pytest.approx(2.0)
  mixed = jnp.asarray([[0, 1], [0, 1], [2, 3], [2, 3]])
  mixed_probs = jnp.asarray([[0.5, 0.5, 0, 0]] * 2 + [[0, 0, 0.5, 0.5]] * 2)
  assert float(moe.load_balance_loss(mixed_probs, mixed, mask, e)) == pytest.approx(1.0)
  assert float(moe.load_balance_loss(mixed_probs, mixed, mask, e, rows=2)) == pytest.approx(2.0)
  logits = jnp.zeros((3, e))
  assert float(moe.router_z_loss(logits, jnp.ones(3))) == pytest.approx(np.log(4) ** 2, rel=1e-6)


def test_layer_stacks_and_parameter_layout():
  params = models.init_params(MOE, jax.random.key(0))
  assert params["layers"]["mlp"]["up_proj"]["kernel"].shape == (1, 32, 48)  # the dense first layer
  assert params["moe_layers"]["mlp"]["wi_gate"].shape == (2, 8, 32, 16)
  assert params["moe_layers"]["mlp"]["router"].shape == (2, 32, 8)
  assert params["moe_layers"]["mlp"]["shared_experts"]["up_proj"]["kernel"].shape == (2, 32, 24)
  interval = MOE.replace(num_layers=5, moe_layer_interval=2)
  p2 = models.init_params(interval, jax.random.key(0))
  assert p2["moe_layers"]["block_0"]["mlp"]["up_proj"]["kernel"].shape == (2, 32, 48)
  assert p2["moe_layers"]["block_1"]["mlp"]["wo"].shape == (2, 8, 16, 32)
  assert [interval.layer_is_moe(i) for i in range(5)] == [False, False, True, False, True]
  counts = models.param_count(MOE)
  routed = 2 * 3 * 8 * 32 * 16
  assert counts["total"] - counts["active"] == routed * 6 // 8


@pytest.mark.parametrize("layout", [dict(), dict(num_layers=5, moe_layer_interval=2),
                                    dict(first_dense_layers=0, num_layers=2, router_type="sigmoid",
                                         shared_expert_gate=True)])
def test_model_paths_agree_and_cached_generation_equals_full_forward(layout):
  from yijax.eval import generate

  config = MOE.replace(**layout)
  params = models.init_params(config, jax.random.key(1))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 12)), jnp.int32)
  ragged = models.apply(config, params, tokens)
  dense = models.apply(config.replace(moe_impl="dense"), params, tokens)
  np.testing.assert_allclose(ragged, dense, rtol=1e-4, atol=1e-4)
  prompt = [3, 14, 15, 92]
  assert generate.Generator(config, params).generate([prompt], 6)[0] == generate.greedy_reference(
      config, params, prompt, 6)


def test_aux_losses_and_stats_are_returned():
  config = MOE.replace(aux_loss_coef=0.1, router_z_loss_coef=0.01)
  params = models.init_params(config, jax.random.key(2))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 97, (2, 16)), jnp.int32)
  _, aux = models.apply(config, params, tokens, return_aux=True)
  assert set(aux["losses"]) == {"load_balance", "router_z"}
  # two MoE layers, each >= coef * 1 (balance is 1 at best)
  assert float(aux["losses"]["load_balance"]) >= 0.2 - 1e-6
  load = aux["stats"]["moe_layers"]["mlp"]["expert_load"][0]
  assert load.shape == (2, 8)
  np.testing.assert_allclose(np.asarray(load).sum(-1), 1.0, rtol=1e-6)
  metrics = moe.load_metrics(aux["stats"])
  assert set(metrics) == {"moe/load_max_over_mean/0", "moe/load_max_over_mean/1"}


def test_selection_bias_moves_toward_balance():
  config = MOE.replace(router_type="sigmoid")
  params = models.init_params(config, jax.random.key(3))
  stats = {"moe_layers": {"mlp": {"expert_load": (jnp.asarray([[0.5, 0.5] + [0.0] * 6] * 2),)}}}
  updated = moe.update_selection_bias(params, stats, 0.01)
  bias = np.asarray(updated["moe_layers"]["mlp"]["selection_bias"])
  np.testing.assert_allclose(bias[:, :2], -0.01)
  np.testing.assert_allclose(bias[:, 2:], 0.01)
  assert updated["layers"] is params["layers"] or jax.tree.all(jax.tree.map(
      lambda a, b: bool((a == b).all()), updated["layers"], params["layers"]))


def test_moe_config_errors():
  with pytest.raises(ConfigError, match="num_experts_per_token=9"):
    MOE.replace(num_experts_per_token=9).validate()
  with pytest.raises(ConfigError, match="moe_layer_interval=2"):
    MOE.replace(num_layers=4, moe_layer_interval=2).validate()  # 3 layers after the dense one
  with pytest.raises(ConfigError, match="router_bias_update_rate"):
    MOE.replace(router_bias_update_rate=0.001).validate()
  with pytest.raises(ConfigError, match="capacity_factor > 0"):
    MOE.replace(moe_impl="capacity").validate()
  with pytest.raises(ConfigError, match="top_expert_groups"):
    MOE.replace(num_expert_groups=4, top_expert_groups=5).validate()
