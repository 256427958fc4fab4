"""Expert parallelism on 8 CPU devices: experts sharded on the `expert` axis,
token copies exchanged with all-to-all; same loss and gradients as one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax import models, sharding
from yijax.models.config import ModelConfig

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     rope_theta=10000.0, max_seq_len=64, num_experts=8, num_experts_per_token=2,
                     num_shared_experts=1, expert_mlp_dim=16, shared_expert_mlp_dim=16, first_dense_layers=1,
                     aux_loss_coef=0.01, router_z_loss_coef=0.001)


def _loss(config, params, tokens, segments):
  logits, aux = models.apply(config, params, tokens[:, :-1], segment_ids=segments[:, :-1], return_aux=True)
  nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))
  return nll + sum(aux["losses"].values())


def _batch():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 64, (8, 17)), jnp.int32)
  segments = jnp.asarray(np.repeat([[1] * 9 + [2] * 6 + [0] * 2], 8, 0), jnp.int32)
  return tokens, segments


@pytest.fixture(scope="module")
def reference():
  params = models.init_params(CONFIG, jax.random.key(0))
  tokens, segments = _batch()
  loss, grads = jax.jit(jax.value_and_grad(lambda p: _loss(CONFIG, p, tokens, segments)))(params)
  return params, loss, grads


@pytest.mark.parametrize("mesh_shape", [{"expert": 4, "data": 2}, {"expert": 8}, {"expert": 2, "fsdp": 2, "data": 2}])
def test_expert_parallel_matches_single_device(reference, mesh_shape):
  params, ref_loss, ref_grads = reference
  mesh = sharding.make_mesh(mesh_shape)
  shardings = models.param_shardings(CONFIG, mesh)
  assert shardings["moe_layers"]["mlp"]["wi_gate"].spec[1] == "expert"
  tokens, segments = _batch()
  data = sharding.data_sharding(mesh)
  with sharding.use_mesh(mesh):
    step = jax.jit(jax.value_and_grad(lambda p, t, s: _loss(CONFIG, p, t, s)),
                   in_shardings=(shardings, data, data), out_shardings=(sharding.replicated(mesh), shardings))
    loss, grads = step(jax.device_put(params, shardings), jax.device_put(tokens, data),
                       jax.device_put(segments, data))
    lowered = step.lower(params, tokens, segments).as_text()
  assert "all_to_all" in lowered or "all-to-all" in lowered
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_expert_parallel_capacity_drops_are_reported():
  config = CONFIG.replace(capacity_factor=0.5, aux_loss_coef=0.0, router_z_loss_coef=0.0)
  params = models.init_params(config, jax.random.key(0))
  tokens, segments = _batch()
  mesh = sharding.make_mesh({"expert": 4, "data": 2})
  with sharding.use_mesh(mesh):
    _, aux = jax.jit(lambda p: models.apply(config, p, tokens, segment_ids=segments, return_aux=True))(params)
  dropped = float(aux["stats"]["moe_layers"]["mlp"]["dropped"][0].mean())
  assert 0.0 < dropped < 1.0
