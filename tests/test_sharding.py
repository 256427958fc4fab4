"""Meshes on 8 CPU devices: same loss and gradients as one device, and the
sharding of every parameter is the one its logical names and the rules give."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from yijax import models, sharding
from yijax.models.config import ConfigError, ModelConfig

CONFIG = ModelConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     mlp_dim=128, rope_theta=10000.0, max_seq_len=64)


def _loss(config, params, tokens, segments):
  logits = models.apply(config, params, tokens[:, :-1], segment_ids=segments[:, :-1])
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def _batch():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 128, (8, 17)), jnp.int32)
  segments = jnp.asarray(np.repeat([[1] * 9 + [2] * 8], 8, 0), jnp.int32)
  return tokens, segments


@pytest.fixture(scope="module")
def reference():
  params = models.init_params(CONFIG, jax.random.key(0))
  tokens, segments = _batch()
  loss, grads = jax.jit(jax.value_and_grad(lambda p: _loss(CONFIG, p, tokens, segments)))(params)
  return params, loss, grads


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_mesh_matches_single_device(reference, mesh_shape):
  assert jax.device_count() == 8
  params, ref_loss, ref_grads = reference
  mesh = sharding.make_mesh(mesh_shape)
  shardings = models.param_shardings(CONFIG, mesh)
  sharded_params = jax.device_put(params, shardings)
  tokens, segments = _batch()
  data = sharding.data_sharding(mesh)
  tokens, segments = jax.device_put(tokens, data), jax.device_put(segments, data)
  with sharding.use_mesh(mesh):
    step = jax.jit(jax.value_and_grad(lambda p, t, s: _loss(CONFIG, p, t, s)),
                   in_shardings=(shardings, data, data), out_shardings=(sharding.replicated(mesh), shardings))
    loss, grads = step(sharded_params, tokens, segments)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=2e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  for g, s in zip(jax.tree.leaves(grads), jax.tree.leaves(shardings)):
    assert g.sharding.is_equivalent_to(s, g.ndim)


def test_parameters_are_created_in_their_sharding():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  params = models.init_params(CONFIG, jax.random.key(0), mesh=mesh)
  expected = {
      ("embed", "embedding"): P("tensor", "fsdp"),
      ("lm_head", "kernel"): P("fsdp", "tensor"),
      ("final_norm", "scale"): P("fsdp"),
      ("layers", "attention", "q_proj", "kernel"): P(None, "fsdp", "tensor", None),
      ("layers", "attention", "k_proj", "kernel"): P(None, "fsdp", "tensor", None),
      ("layers", "attention", "o_proj", "kernel"): P(None, "tensor", None, "fsdp"),
      ("layers", "mlp", "gate_proj", "kernel"): P(None, "fsdp", "tensor"),
      ("layers", "mlp", "down_proj", "kernel"): P(None, "tensor", "fsdp"),
      ("layers", "mlp_norm", "scale"): P(None, "fsdp"),
  }
  for path, spec in expected.items():
    leaf = params
    for key in path:
      leaf = leaf[key]
    assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, spec), leaf.ndim), (path, leaf.sharding)
  # the same values as an unsharded init
  single = models.init_params(CONFIG, jax.random.key(0))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single)):
    np.testing.assert_array_equal(a, b)


def test_rules_from_config_change_the_layout():
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  rules = [("batch", ["data", "fsdp"]), ("embed", None), ("mlp", "fsdp"), ("heads", "tensor")]
  shard = models.param_shardings(CONFIG, mesh, rules)
  assert shard["layers"]["mlp"]["gate_proj"]["kernel"].spec == P(None, None, "fsdp")
  assert shard["layers"]["attention"]["q_proj"]["kernel"].spec == P(None, None, "tensor", None)


def test_dimensions_a_mesh_axis_does_not_divide_are_replicated():
  mqa = CONFIG.replace(num_kv_heads=1)
  mesh = sharding.make_mesh({"data": 4, "tensor": 2})
  shard = models.param_shardings(mqa, mesh)
  assert shard["layers"]["attention"]["k_proj"]["kernel"].spec[2] is None  # 1 kv head: not over tensor=2
  assert shard["layers"]["attention"]["q_proj"]["kernel"].spec[2] == "tensor"


def test_mesh_errors_name_the_fix():
  with pytest.raises(ConfigError, match=r"has 4 devices but 8 are present.*-1"):
    sharding.make_mesh({"data": 2, "tensor": 2})
  with pytest.raises(ConfigError, match="only one mesh axis may be -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1})
  with pytest.raises(ConfigError, match="unknown"):
    sharding.make_mesh({"model": 8})
  assert dict(sharding.make_mesh({"fsdp": -1, "tensor": 2}).shape) == {
      "data": 1, "fsdp": 4, "tensor": 2, "sequence": 1, "expert": 1}
