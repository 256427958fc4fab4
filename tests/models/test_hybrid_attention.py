"""Yi-Lightning hybrid attention: sliding-window layers, cross-layer KV sharing, their caches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from yijax import models
from yijax.convert import hf
from yijax.eval import generate
from yijax.models import presets, rope
from yijax.models.config import ConfigError, ModelConfig
from yijax.train import params_io

HYBRID = ModelConfig(vocab_size=97, hidden_size=32, num_layers=8, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     rope_theta=10000.0, max_seq_len=128, attention_pattern="SSFF", sliding_window=5,
                     kv_share_group=2)


def test_sliding_window_equals_transformers_mistral(tmp_path):
  from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

  torch.manual_seed(0)
  model = MistralForCausalLM(MistralConfig(
      vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
      num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, sliding_window=7,
      attn_implementation="eager")).eval()
  model.save_pretrained(str(tmp_path / "hf"))
  hf.hf_to_yijax(str(tmp_path / "hf"), str(tmp_path / "yx"))
  config, params = params_io.load_model(str(tmp_path / "yx"))
  assert (config.attention_pattern, config.sliding_window) == ("S", 7)
  tokens = np.random.default_rng(0).integers(0, 97, (2, 30))
  with torch.no_grad():
    ref = model(torch.tensor(tokens)).logits.numpy()
  out = np.asarray(models.apply(config, params, tokens))
  assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4
  full = np.asarray(models.apply(config.replace(attention_pattern="", sliding_window=0), params, tokens))
  assert np.abs(full[:, 10:] - ref[:, 10:]).max() > 1e-3  # the window really matters here
  hf.yijax_to_hf(str(tmp_path / "yx"), str(tmp_path / "hf2"))
  reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf2"), attn_implementation="eager").eval()
  assert type(reloaded).__name__ == "MistralForCausalLM"
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded(torch.tensor(tokens)).logits.numpy(), ref)


def test_hybrid_layouts_without_a_transformers_twin_are_not_exported(tmp_path):
  params = models.init_params(HYBRID, jax.random.key(0))
  params_io.save_model(str(tmp_path / "yx"), params, HYBRID)
  with pytest.raises(hf.ConversionError, match="no Hugging Face Llama-family equivalent"):
    hf.yijax_to_hf(str(tmp_path / "yx"), str(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists()


def _rms(x, scale, eps):
  return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def reference_forward(config, params, tokens):
  """Layer by layer, no scan: each layer's window and whose K/V it uses spelled out."""
  x = params["embed"]["embedding"][tokens]
  b, s = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(s), (b, s))
  inv_freq, _ = rope.static_inv_freq(config.resolved_head_dim, config.rope_theta, "default", {})
  period = len(config.attention_pattern)
  shared_kv = None
  for layer in range(config.num_layers):
    p = jax.tree.map(lambda a: a[layer // period], params["layers"][f"block_{layer % period}"])
    h = _rms(x, p["attention_norm"]["scale"], config.norm_eps)
    q = rope.apply_rope(jnp.einsum("bse,ehd->bshd", h, p["attention"]["q_proj"]["kernel"]), positions, inv_freq)
    if layer % config.kv_share_group == 0:
      k = rope.apply_rope(jnp.einsum("bse,ehd->bshd", h, p["attention"]["k_proj"]["kernel"]), positions, inv_freq)
      v = jnp.einsum("bse,ehd->bshd", h, p["attention"]["v_proj"]["kernel"])
      shared_kv = (k, v)
    else:
      assert "k_proj" not in p["attention"]
    k, v = shared_kv
    window = config.layer_window(layer)
    i, j = np.arange(s)[:, None], np.arange(s)[None]
    allowed = (j <= i) & ((i - j < window) if window else True)
    group = config.num_heads // config.num_kv_heads
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.repeat(k, group, axis=2)) / np.sqrt(config.resolved_head_dim)
    probs = jax.nn.softmax(jnp.where(allowed, scores, -1e30), -1)
    attn = jnp.einsum("bhqk,bkhd->bqhd", probs, jnp.repeat(v, group, axis=2))
    x = x + jnp.einsum("bqhd,hde->bqe", attn, p["attention"]["o_proj"]["kernel"])
    h = _rms(x, p["mlp_norm"]["scale"], config.norm_eps)
    m = p["mlp"]
    x = x + (jax.nn.silu(h @ m["gate_proj"]["kernel"]) * (h @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]
  x = _rms(x, params["final_norm"]["scale"], config.norm_eps)
  return x @ params["lm_head"]["kernel"]


def test_pattern_and_kv_sharing_equal_a_direct_reference():
  params = models.init_params(HYBRID, jax.random.key(0))
  assert "k_proj" in params["layers"]["block_0"]["attention"]
  assert "k_proj" not in params["layers"]["block_1"]["attention"]
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 97, (2, 20)))
  np.testing.assert_allclose(models.apply(HYBRID, params, tokens), reference_forward(HYBRID, params, tokens),
                             rtol=1e-4, atol=1e-4)


def test_cache_holds_only_what_the_layers_need_and_generation_matches():
  cache = models.init_cache(HYBRID, batch=2, max_len=64)
  step = cache["layers"]
  assert set(step) == {"block_0", "block_2"}  # block_1 and block_3 reuse their group's K/V
  assert step["block_0"]["k"].shape == (2, 2, 5, 2, 8) and step["block_0"]["pos"].shape == (2, 2, 5)
  assert step["block_2"]["k"].shape == (2, 2, 64, 2, 8) and "pos" not in step["block_2"]
  params = models.init_params(HYBRID, jax.random.key(2))
  gen = generate.Generator(HYBRID, params)
  prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3]]  # longer and shorter than the window
  outputs = gen.generate(prompts, 9)
  for prompt, out in zip(prompts, outputs):
    assert out == generate.greedy_reference(HYBRID, params, prompt, 9)


def test_layout_errors():
  with pytest.raises(ConfigError, match="sliding_window"):
    HYBRID.replace(sliding_window=0).validate()
  with pytest.raises(ConfigError, match="mix full and sliding"):
    HYBRID.replace(attention_pattern="SFSF").validate()
  with pytest.raises(ConfigError, match="kv_share_group=3"):
    HYBRID.replace(kv_share_group=3).validate()


@pytest.mark.slow  # an end-to-end training (15-65 s on 2 cores): CI runs it, the inner loop does not
def test_yi_lightning_tiny_trains_with_yijax_train(tmp_path, prepared_data):
  """configs/pretrain/yi_lightning_tiny.py: MoE + sliding/full layers + KV sharing through `yijax train`."""
  import json

  from yijax import cli

  config = presets.get("yi_lightning_tiny")
  assert config.num_experts == 16 and config.attention_pattern == "SSFF" and config.kv_share_group == 2
  workdir = tmp_path / "lightning"
  assert cli.main(["yijax", "train", "--config=configs/pretrain/yi_lightning_tiny.py", f"--workdir={workdir}",
                   f"--config.data.prepared_dir={prepared_data}", "--config.model.sliding_window=16",
                   "--config.model.hidden_size=64", "--config.model.num_heads=4", "--config.model.head_dim=16",
                   "--config.train.steps=4", "--config.train.batch_size=8", "--config.model.num_experts=8", "--config.train.seq_len=64",
                   "--config.train.progress_bar=False", "--config.optimizer.warmup_steps=1",
                   "--config.optimizer.lr=3e-3", "--config.eval.batches=0"]) == 0
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows][-1] == 4 and all(np.isfinite(r["loss"]) for r in rows)
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert any(k.startswith("moe/") or "aux" in k for k in rows[-1])  # the router's losses/metrics are logged
  saved = json.load(open(workdir / "config.json"))
  assert saved["model"]["attention_pattern"] == "SSFF" and saved["model"]["sliding_window"] == 16
