"""Blockwise (flash-style) attention: equal to the XLA reference in value and gradients
(segments, GQA/MQA, sliding windows, lengths that are not a multiple of the block),
and memory that grows linearly with length where XLA's grows quadratically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax import models
from yijax.models import attention, blockwise
from yijax.models.config import ConfigError, ModelConfig


def _inputs(b, s, heads, kv_heads, d, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v, weights = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in
                      ((b, s, heads, d), (b, s, kv_heads, d), (b, s, kv_heads, d), (b, s, heads, d)))
  segments = np.ones((b, s), np.int32)
  for row in segments:  # three documents, then padding (segment 0)
    cuts = np.sort(rng.choice(np.arange(1, s), size=3, replace=False))
    row[cuts[0]:] = 2
    row[cuts[1]:] = 3
    row[cuts[2]:] = 0
  return q, k, v, weights, jnp.asarray(segments)


def _xla(q, k, v, segments, window=0):
  index = jnp.broadcast_to(jnp.arange(q.shape[1]), q.shape[:2])
  mask = attention.causal_segment_mask(index, index, segments, segments, window)
  return attention.xla_attention(q, k, v, mask, q.shape[-1] ** -0.5)


@pytest.mark.parametrize("heads,kv_heads,length,block,window,skip", [
    (4, 4, 48, 16, 0, True),
    (4, 2, 41, 16, 0, True),   # 41 = 2 blocks of 16 + 9, padded to 48 and masked
    (4, 1, 48, 16, 0, False),  # MQA, every block pair computed and masked
    (4, 2, 48, 8, 12, True),   # sliding window: blocks outside it are skipped too
])
def test_blockwise_matches_xla(heads, kv_heads, length, block, window, skip):
  q, k, v, weights, segments = _inputs(2, length, heads, kv_heads, 8)

  def loss(fn):
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * weights), argnums=(0, 1, 2)))

  blocked = lambda q, k, v: blockwise.blockwise_attention(
      q, k, v, segments, window=window, block_q=block, block_kv=block, skip_masked_blocks=skip)
  np.testing.assert_allclose(blocked(q, k, v), _xla(q, k, v, segments, window), rtol=1e-5, atol=1e-5)
  value, grads = loss(blocked)(q, k, v)
  ref_value, ref_grads = loss(lambda q, k, v: _xla(q, k, v, segments, window))(q, k, v)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_flash_attention_on_chunks_at_global_positions():
  """Queries in zig-zag chunks (as context parallelism holds them) against all keys."""
  q, k, v, _, segments = _inputs(2, 32, 4, 2, 8, seed=1)
  rows = np.r_[8:16, 16:24]  # chunks 1 and 2 of 4
  out = blockwise.flash_attention(q[:, rows], k, v, jnp.asarray([8, 16]), jnp.asarray([0]),
                                  segments[:, rows], segments, block_q=4, block_kv=8)
  np.testing.assert_allclose(out, _xla(q, k, v, segments)[:, rows], rtol=1e-5, atol=1e-5)


def test_bfloat16_close_to_float32():
  q, k, v, _, segments = _inputs(1, 64, 4, 2, 16, seed=2)
  out = blockwise.blockwise_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)), segments,
                                      block_q=16, block_kv=16)
  assert out.dtype == jnp.bfloat16
  ref = _xla(q, k, v, segments)
  assert float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref)) < 2e-2


def _temp_bytes(fn, length):
  """Scratch memory XLA plans for forward + backward at this length (compiled from shapes only)."""
  q = jax.ShapeDtypeStruct((1, length, 4, 64), jnp.float32)
  kv = jax.ShapeDtypeStruct((1, length, 2, 64), jnp.float32)
  segments = jax.ShapeDtypeStruct((1, length), jnp.int32)
  grad = jax.grad(lambda q, k, v, s: jnp.sum(fn(q, k, v, s)), argnums=(0, 1, 2))
  return jax.jit(grad).lower(q, kv, kv, segments).compile().memory_analysis().temp_size_in_bytes


def test_memory_linear_in_length_where_xla_is_quadratic():
  lengths = (2048, 4096, 8192)
  xla = [_temp_bytes(_xla, n) for n in lengths]
  blocked = [_temp_bytes(blockwise.blockwise_attention, n) for n in lengths]
  growth = lambda m: (m[2] - m[1]) / (m[1] - m[0])  # 4 for quadratic, 2 for linear (any constant)
  assert growth(xla) > 3.5 and xla[2] / xla[1] > 3.5, xla
  assert growth(blocked) < 2.5 and blocked[2] / blocked[1] < 2.2, blocked
  assert blocked[2] * 20 < xla[2], (blocked, xla)


def test_auto_picks_blockwise_for_long_sequences_off_accelerators():
  if jax.default_backend() in ("gpu", "tpu"):
    pytest.skip("auto picks cudnn / splash on accelerators")
  assert attention.resolve_impl("auto", blockwise.BLOCKWISE_MIN_LENGTH - 1) == "xla"
  assert attention.resolve_impl("auto", blockwise.BLOCKWISE_MIN_LENGTH) == "blockwise"
  assert attention.resolve_impl("blockwise", 16) == "blockwise"


def test_blockwise_inside_the_scanned_remat_model_matches_xla():
  config = ModelConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       mlp_dim=128, rope_theta=10000.0, max_seq_len=64, remat_policy="full")
  params = models.init_params(config, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 64)), jnp.int32)
  segments = jnp.asarray(np.repeat([[1] * 20 + [2] * 40 + [0] * 4], 2, 0), jnp.int32)

  def run(impl):
    cfg = config.replace(attention_impl=impl)
    loss = lambda p: jnp.mean(models.apply(cfg, p, tokens, segment_ids=segments) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (value, grads), (ref_value, ref_grads) = run("blockwise"), run("xla")
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_config_names_the_bad_context_parallel_value():
  with pytest.raises(ConfigError, match="context_parallel"):
    ModelConfig(context_parallel="zigzag").validate()
  ModelConfig(attention_impl="blockwise", context_parallel="allgather").validate()
