"""Context parallelism on 8 CPU devices: the full model with the length sharded over
`sequence` (ring and all-gather attention, with data and tensor axes, packed
segments) gives the loss and gradients of one device, and the compiled step
really uses the collective each algorithm is built on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax import models, sharding
from yijax.models import attention, context_parallel
from yijax.models.config import ConfigError, ModelConfig

CONFIG = ModelConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     mlp_dim=128, rope_theta=10000.0, max_seq_len=128, attention_impl="xla")
BATCH, LENGTH = 4, 64


def _loss(config, params, inputs, targets, positions, segments):
  logp = jax.nn.log_softmax(models.apply(config, params, inputs, positions, segments))
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def _batch():
  """Packed rows: documents of different lengths per row, padding (segment 0) at some ends."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 128, (BATCH, LENGTH + 1))
  segments = np.zeros((BATCH, LENGTH + 1), np.int32)
  positions = np.zeros((BATCH, LENGTH + 1), np.int32)
  for row, cuts in enumerate([(5, 30, 65), (40, 60), (17, 18, 50, 65), (65,)]):
    start = 0
    for doc, end in enumerate(cuts):
      segments[row, start:end] = doc + 1
      positions[row, start:end] = np.arange(end - start)
      start = end
  arrays = (tokens[:, :-1], tokens[:, 1:], positions[:, :-1], segments[:, :-1])
  return tuple(jnp.asarray(a, jnp.int32) for a in arrays)


@pytest.fixture(scope="module")
def reference():
  params = models.init_params(CONFIG, jax.random.key(0))
  loss, grads = jax.jit(jax.value_and_grad(lambda p: _loss(CONFIG, p, *_batch())))(params)
  return params, loss, grads


@pytest.mark.parametrize("mode", ["ring", "allgather"])
@pytest.mark.parametrize("mesh_shape", [{"sequence": 4, "data": 2}, {"sequence": 8},
                                        {"sequence": 2, "tensor": 2, "data": 2}])
def test_context_parallel_matches_single_device(reference, mesh_shape, mode):
  params, ref_loss, ref_grads = reference
  config = CONFIG.replace(context_parallel=mode)
  mesh = sharding.make_mesh(mesh_shape)
  shardings = models.param_shardings(config, mesh)
  data = sharding.data_sharding(mesh)
  batch = [jax.device_put(a, data) for a in _batch()]
  with sharding.use_mesh(mesh):
    step = jax.jit(jax.value_and_grad(lambda p, *b: _loss(config, p, *b)),
                   in_shardings=(shardings,) + (data,) * 4, out_shardings=(sharding.replicated(mesh), shardings))
    compiled = step.lower(jax.device_put(params, shardings), *batch).compile()
    loss, grads = compiled(jax.device_put(params, shardings), *batch)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))
  hlo = compiled.as_text()
  if mode == "ring":  # K/V move by collective permutes only, never gathered
    assert "collective-permute" in hlo and "all-gather" not in hlo
  else:
    assert "all-gather" in hlo


@pytest.mark.parametrize("mode", ["ring", "allgather"])
def test_one_kv_head_over_tensor_with_a_sliding_window(mode):
  """MQA with heads over tensor=4 (the single K/V head is replicated and picked per device),
  a sliding window, the kernel alone: value and gradients equal the XLA reference."""
  rng = np.random.default_rng(1)
  b, s, heads, d, window = 2, 32, 4, 8, 6
  q, weights = (jnp.asarray(rng.normal(size=(b, s, heads, d)), jnp.float32) for _ in range(2))
  k, v = (jnp.asarray(rng.normal(size=(b, s, 1, d)), jnp.float32) for _ in range(2))
  segments = jnp.asarray(np.repeat([[1] * 13 + [2] * 19], b, 0), jnp.int32)
  index = jnp.broadcast_to(jnp.arange(s), (b, s))
  mask = attention.causal_segment_mask(index, index, segments, segments, window)
  loss = lambda fn: jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * weights), argnums=(0, 1, 2)))
  ref_value, ref_grads = loss(lambda q, k, v: attention.xla_attention(q, k, v, mask, d ** -0.5))(q, k, v)
  with sharding.use_mesh(sharding.make_mesh({"sequence": 2, "tensor": 4})):
    value, grads = loss(lambda q, k, v: context_parallel.context_parallel_attention(
        q, k, v, segments, d ** -0.5, mode, window=window, block=4))(q, k, v)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_when_context_parallelism_applies_and_its_length_error():
  shape = (8, 64, 4, 16)
  assert context_parallel.context_parallel_mode("auto", shape) is None  # no mesh
  with sharding.use_mesh(sharding.make_mesh({"data": 8})):
    assert context_parallel.context_parallel_mode("ring", shape) is None  # length not sharded
  with sharding.use_mesh(sharding.make_mesh({"sequence": 8})):
    assert context_parallel.context_parallel_mode("auto", shape) == "ring"
    assert context_parallel.context_parallel_mode("allgather", shape) == "allgather"
    assert context_parallel.context_parallel_mode("none", shape) is None
    x = jnp.zeros((2, 40, 4, 16))  # 40 = 8 x 5: sharded, but not into 16 zig-zag chunks
    with pytest.raises(ValueError, match="not divisible by 16"):
      context_parallel.context_parallel_attention(x, x, x, None, 0.25)
  with pytest.raises(ConfigError, match="context_parallel"):
    CONFIG.replace(context_parallel="zigzag").validate()
