"""Prefill through the training kernels: the logits and cache of attending the cache token by token's
predecessor path, and compiled memory that grows linearly in the prompt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax import models
from yijax.eval import generate
from yijax.models.config import ModelConfig

DENSE = ModelConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48,
                    rope_theta=10000.0, max_seq_len=4096)
HYBRID = DENSE.replace(num_layers=8, attention_pattern="SSFF", sliding_window=5, kv_share_group=2)


def _prompts(lengths, bucket, seed=0):
  rng = np.random.default_rng(seed)
  tokens = np.zeros((len(lengths), bucket), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(1, DENSE.vocab_size, n)
  index = np.broadcast_to(np.arange(bucket), tokens.shape)
  valid = index < np.asarray(lengths)[:, None]
  return jnp.asarray(tokens), jnp.asarray(np.where(valid, index, -1).astype(np.int32)), jnp.asarray(valid)


@pytest.mark.parametrize("config", [DENSE, HYBRID], ids=["dense", "hybrid"])
@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_prefill_equals_attending_the_cache(config, impl):
  config = config.replace(attention_impl=impl)
  params = models.init_params(config, jax.random.key(0))
  tokens, positions, valid = _prompts([24, 9, 1], 24)
  cache = models.init_cache(config, 3, 32)
  # before: the prompt attends to the cache it has just written (XLA attention over the whole cache)
  before, before_cache = models.apply(config, params, tokens, positions, cache=cache)
  # now: segment ids mark a prefill, which attends within the prompt through the training kernel
  after, after_cache = models.apply(config, params, tokens, positions, valid.astype(jnp.int32), cache=cache)
  np.testing.assert_allclose(np.asarray(after)[np.asarray(valid)], np.asarray(before)[np.asarray(valid)],
                             rtol=2e-5, atol=2e-5)
  for a, b in zip(jax.tree.leaves(after_cache), jax.tree.leaves(before_cache)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_generation_through_a_blockwise_prefill_equals_full_forward_greedy():
  config = HYBRID.replace(attention_impl="blockwise")
  params = models.init_params(config, jax.random.key(1))
  prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3]]
  outputs = generate.Generator(config, params).generate(prompts, 6)
  for prompt, out in zip(prompts, outputs):
    assert out == generate.greedy_reference(config, params, prompt, 6)


def _prefill_temp_bytes(config, length):
  params = models.abstract_params(config)
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  cache = jax.eval_shape(lambda: models.init_cache(config, 1, length))

  def prefill(params, cache, tokens):
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
    logits, cache = models.apply(config, params, tokens, positions, jnp.ones_like(tokens), cache=cache)
    return logits[:, -1], cache

  compiled = jax.jit(prefill).lower(params, cache, tokens).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_prefill_memory_grows_linearly_in_the_prompt():
  # XLA attention over the cache would hold [heads, s, s] scores: 16x the memory at 4x the length. The
  # blockwise prefill (the kernel `auto` picks on CPU from 1024 tokens) holds O(s) activations
  config = DENSE.replace(attention_impl="auto", max_seq_len=32768)
  short, long = _prefill_temp_bytes(config, 8192), _prefill_temp_bytes(config, 32768)
  assert long < 6 * short, (short, long)
  xla = DENSE.replace(attention_impl="xla", max_seq_len=32768)
  assert _prefill_temp_bytes(xla, 8192) > 4 * short  # the quadratic kernel, for contrast
