"""Model config validation: bad values fail before compiling, naming the field."""

import pytest

from yijax.models import presets
from yijax.models.config import ConfigError, ModelConfig


def test_heads_not_divisible_by_kv_heads():
  with pytest.raises(ConfigError, match=r"model\.num_heads=6 is not divisible by model\.num_kv_heads=4"):
    ModelConfig(num_heads=6, num_kv_heads=4, hidden_size=48).validate()


def test_hidden_not_divisible_by_heads():
  with pytest.raises(ConfigError, match=r"model\.hidden_size=50 is not divisible by model\.num_heads=4"):
    ModelConfig(hidden_size=50, num_heads=4, num_kv_heads=2).validate()
  ModelConfig(hidden_size=50, num_heads=4, num_kv_heads=2, head_dim=16).validate()  # explicit head_dim is fine


def test_unknown_field_names_closest():
  with pytest.raises(ConfigError, match=r"model\.num_kv_head \(closest: num_kv_heads"):
    ModelConfig.from_dict({"num_kv_head": 2})


def test_bad_enum_values():
  with pytest.raises(ConfigError, match="attention_impl"):
    ModelConfig(attention_impl="flash").validate()
  with pytest.raises(ConfigError, match="remat_policy"):
    ModelConfig(remat_policy="some").validate()


def test_json_round_trip():
  config = presets.get("tiny").replace(rope_type="linear", rope_scaling_params=(("factor", 2.0),))
  assert ModelConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_validate(name):
  presets.get(name).validate()


def test_yi_values():
  yi6 = presets.get("yi_6b")
  assert (yi6.hidden_size, yi6.num_layers, yi6.num_heads, yi6.num_kv_heads, yi6.resolved_head_dim,
          yi6.mlp_dim, yi6.vocab_size, yi6.rope_theta, yi6.max_seq_len, yi6.norm_eps, yi6.tie_embeddings) == (
              4096, 32, 32, 4, 128, 11008, 64000, 5e6, 4096, 1e-5, False)
  yi34 = presets.get("yi_34b")
  assert (yi34.hidden_size, yi34.num_layers, yi34.num_heads, yi34.num_kv_heads, yi34.mlp_dim) == (
      7168, 60, 56, 8, 20480)
  assert presets.get("yi_9b").replace(num_layers=32) == yi6


@pytest.mark.parametrize("rate", [1.0, -0.1, float("nan")])
def test_dropout_rate_out_of_range(rate):
  with pytest.raises(ConfigError, match=r"model\.dropout_rate must be in \[0, 1\)"):
    ModelConfig(dropout_rate=rate).validate()
