"""The dense decoder: parameter layout, packing, remat, dtypes, sizes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax import models
from yijax.models import presets


def test_scanned_parameters_have_a_layers_axis(tiny_config):
  params = models.init_params(tiny_config, jax.random.key(0))
  assert params["layers"]["attention"]["q_proj"]["kernel"].shape == (2, 64, 4, 16)
  assert params["layers"]["attention"]["k_proj"]["kernel"].shape == (2, 64, 2, 16)
  assert params["layers"]["mlp"]["down_proj"]["kernel"].shape == (2, 96, 64)
  specs = nn.get_partition_spec(models.abstract_params(tiny_config))
  assert tuple(specs["layers"]["attention"]["q_proj"]["kernel"]) == ("layers", "embed", "heads", "head_dim")
  assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["lm_head"]["kernel"]) == ("embed", "vocab")


def test_tied_embeddings_have_no_head(tiny_config):
  config = tiny_config.replace(tie_embeddings=True)
  params = models.init_params(config, jax.random.key(0))
  assert "lm_head" not in params
  hidden = models.apply(config, params, jnp.zeros((1, 3), jnp.int32), return_hidden=True)
  logits = models.apply(config, params, jnp.zeros((1, 3), jnp.int32))
  np.testing.assert_allclose(logits, hidden @ params["embed"]["embedding"].T, rtol=1e-5, atol=1e-5)


def test_packed_documents_equal_separate_documents(tiny_config):
  params = models.init_params(tiny_config, jax.random.key(1))
  rng = np.random.default_rng(0)
  doc_a, doc_b = rng.integers(0, 101, 7), rng.integers(0, 101, 9)
  packed = np.concatenate([doc_a, doc_b])[None]
  positions = np.concatenate([np.arange(7), np.arange(9)])[None]
  segments = np.asarray([[1] * 7 + [2] * 9])
  logits = models.apply(tiny_config, params, packed, positions, segments)[0]
  alone_a = models.apply(tiny_config, params, doc_a[None])[0]
  alone_b = models.apply(tiny_config, params, doc_b[None])[0]
  np.testing.assert_allclose(logits[:7], alone_a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[7:], alone_b, rtol=1e-5, atol=1e-5)
  # without segment ids the second document would see the first
  leaky = models.apply(tiny_config, params, packed, positions)[0]
  assert np.abs(leaky[7:] - alone_b).max() > 1e-3


@pytest.mark.parametrize("policy", ["full", "dots", "minimal", "offload"])
def test_remat_policies_keep_loss_and_gradients(tiny_config, policy):
  params = models.init_params(tiny_config, jax.random.key(2))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 101, (2, 12)))

  def loss(config):
    def f(p):
      logits = models.apply(config, p, tokens)
      return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])
    return jax.jit(jax.value_and_grad(f))(params)

  base_loss, base_grads = loss(tiny_config)
  remat_loss, remat_grads = loss(tiny_config.replace(remat_policy=policy))
  np.testing.assert_allclose(remat_loss, base_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(base_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_is_close_to_float32(tiny_config):
  params = models.init_params(tiny_config, jax.random.key(3))
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 101, (2, 16)))
  ref = models.apply(tiny_config, params, tokens)
  out = models.apply(tiny_config.replace(dtype="bfloat16"), params, tokens)
  assert out.dtype == jnp.float32
  assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max())


@pytest.mark.parametrize("name,billions", [("yi_6b", 6.06), ("yi_34b", 34.39), ("yi_9b", 8.83), ("yi_1p25b", 1.25)])
def test_parameter_counts(name, billions):
  assert round(models.param_count(presets.get(name))["total"] / 1e9, 2) == billions


def test_tiny_preset_is_a_few_million():
  assert 1e6 < models.param_count(presets.get("tiny"))["total"] < 10e6
