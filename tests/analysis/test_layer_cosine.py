"""layer_cosine reads the model's own per-layer outputs: right layer numbering for dense, MoE (two stacks) and
hybrid-attention (a period of several layer kinds) models. (tests/test_surgery.py checks the values against
transformers' hidden states.)"""

import jax
import numpy as np
import pytest

from yijax import models
from yijax.analysis import layer_cosine
from yijax.models.config import ModelConfig
from yijax.train import layerwise

DENSE = ModelConfig(vocab_size=97, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=48,
                    rope_theta=10000.0, max_seq_len=64)
MOE = DENSE.replace(num_layers=3, num_experts=4, num_experts_per_token=2, expert_mlp_dim=16, first_dense_layers=1,
                    moe_impl="dense")
HYBRID = DENSE.replace(attention_pattern="SF", sliding_window=4)


def _identity_layer(config, params, layer):
  """The params with every weight of `layer` zeroed: its attention and MLP add nothing, so it is the identity."""
  where = {v: k for k, v in layerwise.layer_index(config).items()}[layer]
  stack, step, block = where

  def zero(path, leaf):
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[0] != stack or (block is not None and keys[1] != block):
      return leaf
    return leaf.at[step].set(0)

  return jax.tree_util.tree_map_with_path(zero, params)


@pytest.mark.parametrize("config", [DENSE, MOE, HYBRID], ids=["dense", "moe", "hybrid"])
def test_each_layer_is_numbered_as_the_model_runs_it(config):
  params = models.init_params(config, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(1, config.vocab_size, (2, 16))
  base = layer_cosine.layer_cosine(config, params, tokens)
  assert len(base["per_layer"]) == config.num_layers and base["tokens"] == 2 * 15
  assert all(-1 <= c < 0.9999 for c in base["per_layer"])
  for layer in range(config.num_layers):
    got = layer_cosine.layer_cosine(config, _identity_layer(config, params, layer), tokens)["per_layer"]
    assert got[layer] == pytest.approx(1.0, abs=1e-6)
    assert all(c < 0.9999 for i, c in enumerate(got) if i != layer)
