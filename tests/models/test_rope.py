"""RoPE and its scalings against transformers, frequencies and logits."""

import numpy as np
import pytest
import torch

from yijax import models
from yijax.convert import hf
from yijax.models import rope
from yijax.train import params_io

SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
}


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_scaled_rope_logits_match_transformers(tmp_path, hf_llama, kind):
  # max_position_embeddings=32 with 48 tokens makes dynamic NTK actually rescale
  model = hf_llama(tmp_path / "hf", rope_scaling=SCALINGS[kind], max_position_embeddings=32, rope_theta=10000.0)
  hf.hf_to_yijax(str(tmp_path / "hf"), str(tmp_path / "yx"))
  config, params = params_io.load_model(str(tmp_path / "yx"))
  assert config.rope_type == kind
  tokens = np.random.default_rng(0).integers(0, 97, (1, 48))
  with torch.no_grad():
    ref = model(torch.tensor(tokens)).logits.numpy()
  out = np.asarray(models.apply(config, params, tokens))
  assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4
  if kind != "dynamic":
    inv_freq, scale = rope.static_inv_freq(config.resolved_head_dim, config.rope_theta, kind, config.rope_scaling)
    hf_rope = model.model.rotary_emb
    np.testing.assert_allclose(inv_freq, hf_rope.inv_freq.numpy(), rtol=1e-6)
    assert scale == pytest.approx(hf_rope.attention_scaling)


def test_rope_theta_changes_frequencies():
  low, _ = rope.static_inv_freq(128, 10_000.0, "default", {})
  high, _ = rope.static_inv_freq(128, 5_000_000.0, "default", {})
  assert low[0] == high[0] == 1.0 and high[-1] < low[-1]


def test_missing_scaling_parameter_is_named():
  from yijax.models.config import ConfigError

  with pytest.raises(ConfigError, match="original_max_position_embeddings"):
    rope.static_inv_freq(64, 1e4, "yarn", {"factor": 2.0})
