"""Hugging Face MoE interop (Mixtral, Qwen2-MoE): logits parity, bit-exact round trips,
both expert layouts, clear errors; and DeepSeek-V3 routing reproduced by moe.route."""

import json
import os

import numpy as np
import pytest
import torch

from yijax import models
from yijax.convert import hf, hf_moe
from yijax.models.config import ModelConfig
from yijax.train import params_io

BASE = dict(vocab_size=61, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False)
MODELS = {
    "mixtral": ("mixtral", dict(intermediate_size=40, num_hidden_layers=2, num_local_experts=4,
                                num_experts_per_tok=2, rope_parameters={"rope_type": "default", "rope_theta": 5e4})),
    # one dense layer first, then MoE layers; top-k weights not renormalised
    "qwen_first_dense": ("qwen2_moe", dict(
        intermediate_size=40, moe_intermediate_size=24, shared_expert_intermediate_size=36, num_hidden_layers=3,
        num_experts=6, num_experts_per_tok=2, qkv_bias=False, mlp_only_layers=[0], norm_topk_prob=False)),
    # every second layer MoE (a scanned PeriodBlock), renormalised, tied embeddings
    "qwen_every_second": ("qwen2_moe", dict(
        intermediate_size=40, moe_intermediate_size=24, shared_expert_intermediate_size=36, num_hidden_layers=4,
        num_experts=8, num_experts_per_tok=3, qkv_bias=False, decoder_sparse_step=2, norm_topk_prob=True,
        tie_word_embeddings=True)),
}


def make_hf_moe(directory, name, seed=0, **overrides):
  """A tiny random transformers MoE model saved with save_pretrained (no download).
  Norms, routers and the shared-expert gate are re-drawn large enough that a
  swapped tensor or a different expert choice shows in the logits."""
  from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

  family, values = MODELS[name]
  values = {**BASE, **values, **overrides}
  torch.manual_seed(seed)
  if family == "mixtral":
    model = MixtralForCausalLM(MixtralConfig(**values))
  else:
    model = Qwen2MoeForCausalLM(Qwen2MoeConfig(**values))
  model.eval()
  with torch.no_grad():
    for param_name, p in model.named_parameters():
      if "norm" in param_name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif param_name.endswith((".gate.weight", "shared_expert_gate.weight")):
        p.copy_(0.5 * torch.randn_like(p))
  model.save_pretrained(str(directory))
  return model


def _tokens(vocab, shape=(2, 19), seed=0):
  return np.random.default_rng(seed).integers(0, vocab, shape)


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


def _relative_error(out, ref):
  return np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()


def _random_params(config, seed=0, std=0.1):
  """A random parameter tree from the abstract shapes (no init compile): norms near 1."""
  rng = np.random.default_rng(seed)
  params = {}
  for path, shape in hf_moe.param_shapes(config).items():
    value = (1.0 if path[-1] == "scale" else 0.0) + std * rng.standard_normal(shape)
    hf.set_path(params, path, value.astype(np.float32))
  return params


def _flat(params):
  import jax

  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("name", list(MODELS))
def test_imported_logits_match_transformers(tmp_path, name):
  model = make_hf_moe(tmp_path / "hf", name)
  config = hf.hf_to_yijax(str(tmp_path / "hf"), str(tmp_path / "yx"))
  assert config.moe_impl == "ragged"
  if name == "qwen_every_second":
    assert (config.first_dense_layers, config.moe_layer_interval) == (0, 2)
  config, params = params_io.load_model(str(tmp_path / "yx"))
  tokens = _tokens(config.vocab_size)
  assert _relative_error(models.apply(config, params, tokens), _hf_logits(model, tokens)) < 1e-4


@pytest.mark.parametrize("name", ["mixtral", "qwen_every_second"])
def test_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, name):
  from safetensors.numpy import load_file
  from transformers import AutoModelForCausalLM

  model = make_hf_moe(tmp_path / "hf", name)
  original = load_file(str(tmp_path / "hf" / "model.safetensors"))
  # transformers 5.x save_pretrained writes the per-expert names of hub checkpoints
  prefix = "block_sparse_moe.experts.0.w1" if name == "mixtral" else "mlp.experts.0.gate_proj"
  assert f"model.layers.1.{prefix}.weight" in original
  hf.hf_to_yijax(str(tmp_path / "hf"), str(tmp_path / "yx"))
  hf.yijax_to_hf(str(tmp_path / "yx"), str(tmp_path / "hf2"), max_shard_bytes=20_000)
  index = json.load(open(tmp_path / "hf2" / "model.safetensors.index.json"))
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 1
  exported = {}
  for shard in shards:
    exported.update(load_file(str(tmp_path / "hf2" / shard)))
  assert sorted(original) == sorted(exported)
  for tensor_name, tensor in original.items():
    assert exported[tensor_name].dtype == tensor.dtype and np.array_equal(exported[tensor_name], tensor), tensor_name
  reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf2")).eval()
  assert type(reloaded) is type(model)
  tokens = _tokens(model.config.vocab_size)
  np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(model, tokens))
  # and the sharded export reads back to the same parameters
  _, first = hf.read_hf(str(tmp_path / "hf"))
  _, second = hf.read_hf(str(tmp_path / "hf2"))
  assert _flat(first).keys() == _flat(second).keys()
  assert all(np.array_equal(a, _flat(second)[k]) for k, a in _flat(first).items())


@pytest.mark.parametrize("name", ["mixtral", "qwen_first_dense"])
def test_fused_v5_layout_reads_like_per_expert(tmp_path, name):
  """The fused experts of transformers 5.x modules (gate_up_proj [E, 2f, d], down_proj
  [E, d, f]) give the same parameters as the per-expert checkpoint; bf16 keeps its bits."""
  import shutil

  from safetensors.torch import save_file

  model = make_hf_moe(tmp_path / "hf", name).to(torch.bfloat16)
  model.save_pretrained(str(tmp_path / "legacy"))
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  assert "model.layers.1.mlp.experts.gate_up_proj" in state
  os.makedirs(tmp_path / "fused")
  save_file(state, str(tmp_path / "fused" / "model.safetensors"), metadata={"format": "pt"})
  shutil.copy(tmp_path / "legacy" / "config.json", tmp_path / "fused" / "config.json")
  config_a, legacy = hf.read_hf(str(tmp_path / "legacy"))
  config_b, fused = hf.read_hf(str(tmp_path / "fused"))
  assert config_a == config_b and config_a.param_dtype == "bfloat16"
  legacy, fused = _flat(legacy), _flat(fused)
  assert legacy.keys() == fused.keys()
  for key, value in legacy.items():
    assert value.dtype == fused[key].dtype and np.array_equal(value.view(np.uint16), fused[key].view(np.uint16)), key


def test_native_moe_model_exports_to_matching_transformers_logits(tmp_path):
  """A yijax-native Qwen2-MoE-style model: 1 dense layer, then every second layer MoE
  (written as mlp_only_layers since the period does not line up with decoder_sparse_step)."""
  from transformers import AutoModelForCausalLM, Qwen2MoeForCausalLM

  config = ModelConfig(vocab_size=53, hidden_size=32, num_layers=5, num_heads=4, num_kv_heads=2, mlp_dim=40,
                       rope_theta=1e4, max_seq_len=128, num_experts=4, num_experts_per_token=2, expert_mlp_dim=16,
                       num_shared_experts=2, shared_expert_mlp_dim=12, shared_expert_gate=True,
                       first_dense_layers=1, moe_layer_interval=2, router_type="softmax_topk")
  params = _random_params(config, seed=1)
  params_io.save_model(str(tmp_path / "yx"), params, config)
  hf.yijax_to_hf(str(tmp_path / "yx"), str(tmp_path / "hf"))
  model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  assert isinstance(model, Qwen2MoeForCausalLM) and model.config.mlp_only_layers == [0, 1, 3]
  tokens = _tokens(config.vocab_size)
  assert _relative_error(models.apply(config, params, tokens), _hf_logits(model, tokens)) < 1e-4


@pytest.mark.parametrize("first,interval,layers", [(0, 1, 3), (1, 1, 3), (0, 2, 4), (2, 2, 6), (1, 2, 5),
                                                   (1, 3, 7), (3, 1, 4), (0, 4, 4)])
def test_layer_pattern_survives_config_round_trip(first, interval, layers):
  config = ModelConfig(vocab_size=64, hidden_size=32, num_layers=layers, num_heads=4, num_kv_heads=2, mlp_dim=40,
                       num_experts=4, expert_mlp_dim=16, num_shared_experts=1, shared_expert_mlp_dim=8,
                       shared_expert_gate=True, first_dense_layers=first, moe_layer_interval=interval)
  back = hf.config_from_hf(hf_moe.config_to_hf(config, "float32"))
  assert [back.layer_is_moe(i) for i in range(layers)] == [config.layer_is_moe(i) for i in range(layers)]
  assert back.replace(head_dim=0, first_dense_layers=first, moe_layer_interval=interval) == config
  mixtral = config.replace(num_shared_experts=0, shared_expert_mlp_dim=0, shared_expert_gate=False,
                           first_dense_layers=0, moe_layer_interval=1, router_type="topk_softmax")
  assert hf.config_from_hf(hf_moe.config_to_hf(mixtral, "float32")).replace(head_dim=0, mlp_dim=40) == mixtral


# ----------------------------------------------------------------------------- errors


def _expect_failure(tmp_path, match):
  out = tmp_path / "out"
  with pytest.raises(hf.ConversionError, match=match):
    hf.hf_to_yijax(str(tmp_path / "hf"), str(out))
  assert not out.exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith("out.tmp")]


def _edit(directory, tensors=None, **config_changes):
  from safetensors.numpy import load_file, save_file

  if tensors:
    path = os.path.join(directory, "model.safetensors")
    values = load_file(path)
    tensors(values)
    save_file(values, path, metadata={"format": "pt"})
  if config_changes:
    path = os.path.join(directory, "config.json")
    json.dump({**json.load(open(path)), **config_changes}, open(path, "w"))


def test_missing_expert_tensor_is_named(tmp_path):
  make_hf_moe(tmp_path / "hf", "mixtral")
  _edit(tmp_path / "hf", lambda t: t.pop("model.layers.1.block_sparse_moe.experts.2.w2.weight"))
  _expect_failure(tmp_path, r"missing tensor model\.layers\.1\.block_sparse_moe\.experts\.2\.w2\.weight "
                            r"\(expected shape \(32, 40\)\)")


def test_wrong_expert_shape_and_unexpected_tensor_are_named(tmp_path):
  make_hf_moe(tmp_path / "hf", "qwen_first_dense")

  def shrink(t):
    t["model.layers.2.mlp.experts.5.up_proj.weight"] = t["model.layers.2.mlp.experts.5.up_proj.weight"][:20]

  _edit(tmp_path / "hf", shrink)
  _expect_failure(tmp_path, r"up_proj\.weight: expected shape \(24, 32\).*found \(20, 32\).*moe_intermediate_size")
  _edit(tmp_path / "hf", lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)}))
  _expect_failure(tmp_path, r"unexpected tensor\(s\) \['model\.layers\.0\.self_attn\.q_proj\.bias'\]")


def test_unrepresentable_configs_are_refused(tmp_path):
  make_hf_moe(tmp_path / "hf", "qwen_first_dense")
  _edit(tmp_path / "hf", qkv_bias=True)
  _expect_failure(tmp_path, r"qkv_bias=True.*no bias")
  _edit(tmp_path / "hf", qkv_bias=False, num_hidden_layers=5, decoder_sparse_step=2, mlp_only_layers=[0])
  _expect_failure(tmp_path, r"MoE layers \[1, 3\] of 5 .*decoder_sparse_step=2.*not a pattern yijax can scan")
  qwen = json.load(open(tmp_path / "hf" / "config.json"))
  with pytest.raises(hf.ConversionError, match="use_sliding_window=True"):
    hf.config_from_hf({**qwen, "use_sliding_window": True})
  with pytest.raises(hf.ConversionError, match="multi-head latent attention"):
    hf.config_from_hf({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3"})


def test_unexportable_yijax_moe_is_refused(tmp_path):
  config = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=40,
                       num_experts=4, expert_mlp_dim=16, router_type="sigmoid")
  params_io.save_model(str(tmp_path / "yx"), _random_params(config), config)
  with pytest.raises(hf.ConversionError, match="router_type='sigmoid'"):
    hf.yijax_to_hf(str(tmp_path / "yx"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  with pytest.raises(hf.ConversionError, match="shared_expert_gate=True"):
    hf_moe.config_to_hf(config.replace(router_type="softmax_topk", num_shared_experts=1, shared_expert_mlp_dim=8),
                        "float32")
  with pytest.raises(hf.ConversionError, match="first_dense_layers=1"):
    hf_moe.config_to_hf(config.replace(router_type="topk_softmax", num_layers=3, first_dense_layers=1), "float32")
  mixtral = config.replace(router_type="topk_softmax")
  params = _random_params(mixtral)
  del params["moe_layers"]["mlp"]["wo"]
  with pytest.raises(hf.ConversionError, match=r"\['moe_layers/mlp/wo'\] are missing from the checkpoint"):
    list(hf_moe.hf_tensors(mixtral, params, "float32"))


# ----------------------------------------------------------------------------- DeepSeek-V3 routing


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_deepseek_v3_router_and_moe_match_transformers(norm_topk_prob):
  """moe.route(router_type="sigmoid") chooses DeepseekV3's experts with its weights
  (correction bias, groups scored by top-2 sums, renormalisation, scaling), and MoEBlock
  with those tensors computes DeepseekV3MoE."""
  import jax
  import jax.numpy as jnp
  from transformers import DeepseekV3Config
  from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

  from yijax.models import moe

  hf_config = DeepseekV3Config(hidden_size=32, moe_intermediate_size=16, n_routed_experts=16, n_group=4,
                               topk_group=2, num_experts_per_tok=4, n_shared_experts=2, routed_scaling_factor=2.5,
                               norm_topk_prob=norm_topk_prob, first_k_dense_replace=0, num_hidden_layers=1)
  torch.manual_seed(0)
  block = DeepseekV3MoE(hf_config).eval()
  with torch.no_grad():
    for p in block.parameters():
      p.normal_(0.0, 0.3)
    block.gate.e_score_correction_bias.normal_(0.0, 0.2)
  config = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=4, mlp_dim=40,
                       **hf_moe.deepseek_v3_moe_fields(hf_config.to_dict())).validate()
  x = torch.randn(3, 11, 32)
  with torch.no_grad():
    logits, hf_weights, hf_experts = block.gate(x)
    hf_out = block(x).numpy()
  bias = block.gate.e_score_correction_bias.numpy()
  weights, experts, _ = moe.route(config, jnp.asarray(logits.numpy()), jnp.asarray(bias))
  order, hf_order = np.argsort(np.asarray(experts), -1), np.argsort(hf_experts.numpy(), -1)
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(experts), order, -1),
                                np.take_along_axis(hf_experts.numpy(), hf_order, -1))
  np.testing.assert_allclose(np.take_along_axis(np.asarray(weights), order, -1),
                             np.take_along_axis(hf_weights.numpy(), hf_order, -1), rtol=1e-5, atol=1e-6)
  # bias changes the choice, not the weights: some token must pick differently without it
  _, unbiased, _ = moe.route(config, jnp.asarray(logits.numpy()))
  assert not np.array_equal(np.sort(np.asarray(unbiased), -1), np.sort(np.asarray(experts), -1))
  _, ungrouped, _ = moe.route(config.replace(num_expert_groups=1, top_expert_groups=1),
                              jnp.asarray(logits.numpy()), jnp.asarray(bias))
  assert not np.array_equal(np.sort(np.asarray(ungrouped), -1), np.sort(np.asarray(experts), -1))

  t = lambda w: jnp.asarray(w.detach().numpy().T)  # noqa: E731
  gate_up = block.experts.gate_up_proj.detach().numpy()
  params = {
      "router": t(block.gate.weight), "selection_bias": jnp.asarray(bias),
      "wi_gate": jnp.asarray(gate_up[:, :16].transpose(0, 2, 1)),
      "wi_up": jnp.asarray(gate_up[:, 16:].transpose(0, 2, 1)),
      "wo": jnp.asarray(block.experts.down_proj.detach().numpy().transpose(0, 2, 1)),
      "shared_experts": {name: {"kernel": t(getattr(block.shared_experts, name).weight)}
                         for name in ("gate_proj", "up_proj", "down_proj")},
  }
  out = moe.MoEBlock(config).apply({"params": params}, jnp.asarray(x.numpy()))
  assert _relative_error(jax.device_get(out), hf_out) < 1e-5
