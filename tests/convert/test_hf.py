"""Hugging Face interop: logits parity, bit-exact round trips, clear errors."""

import json
import os

import numpy as np
import pytest
import torch

from yijax import models
from yijax.convert import hf
from yijax.train import params_io

SHAPES = {
    "gqa_untied": dict(),
    "mha_tied": dict(num_key_value_heads=6, tie_word_embeddings=True),
    "mqa": dict(num_key_value_heads=1),
    "odd_sizes": dict(vocab_size=61, hidden_size=40, intermediate_size=70, num_attention_heads=5,
                      num_key_value_heads=5, num_hidden_layers=3),
    "explicit_head_dim": dict(head_dim=12, hidden_size=40, num_attention_heads=4, num_key_value_heads=2),
}


def _tokens(vocab, shape=(2, 19), seed=0):
  return np.random.default_rng(seed).integers(0, vocab, shape)


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_imported_logits_match_transformers(tmp_path, hf_llama, shape):
  model = hf_llama(tmp_path / "hf", **SHAPES[shape])
  hf.hf_to_yijax(str(tmp_path / "hf"), str(tmp_path / "yx"))
  config, params = params_io.load_model(str(tmp_path / "yx"))
  tokens = _tokens(config.vocab_size)
  ref = _hf_logits(model, tokens)
  out = np.asarray(models.apply(config, params, tokens))
  scale = np.abs(ref).max()
  assert np.abs(out - ref).max() / scale < 1e-4


@pytest.mark.parametrize("shape", ["gqa_untied", "mha_tied"])
def test_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, hf_llama, shape):
  from safetensors.numpy import load_file
  from transformers import AutoModelForCausalLM

  model = hf_llama(tmp_path / "hf", **SHAPES[shape])
  hf.hf_to_yijax(str(tmp_path / "hf"), str(tmp_path / "yx"))
  # tiny shards force the sharded layout with an index file
  hf.yijax_to_hf(str(tmp_path / "yx"), str(tmp_path / "hf2"), max_shard_bytes=20_000)
  index = json.load(open(tmp_path / "hf2" / "model.safetensors.index.json"))
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 1
  original = load_file(str(tmp_path / "hf" / "model.safetensors"))
  exported = {}
  for shard in shards:
    exported.update(load_file(str(tmp_path / "hf2" / shard)))
  assert sorted(original) == sorted(exported)
  for name, tensor in original.items():
    assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name
  reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf2")).eval()
  tokens = _tokens(model.config.vocab_size)
  np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(model, tokens))


def test_bf16_round_trip_keeps_dtype_and_bits(tmp_path, hf_llama):
  from safetensors.numpy import load_file

  model = hf_llama(tmp_path / "hf")
  model.to(torch.bfloat16).save_pretrained(str(tmp_path / "hf_bf16"))
  hf.hf_to_yijax(str(tmp_path / "hf_bf16"), str(tmp_path / "yx"))
  assert params_io.read_model_config(str(tmp_path / "yx")).param_dtype == "bfloat16"
  hf.yijax_to_hf(str(tmp_path / "yx"), str(tmp_path / "hf2"))
  a = load_file(str(tmp_path / "hf_bf16" / "model.safetensors"))
  b = load_file(str(tmp_path / "hf2" / "model.safetensors"))
  for name in a:
    assert b[name].dtype == a[name].dtype
    assert np.array_equal(a[name].view(np.uint16), b[name].view(np.uint16)), name


def test_native_model_exports_to_matching_transformers_logits(tmp_path, tiny_config):
  import jax
  from transformers import AutoModelForCausalLM

  params = models.init_params(tiny_config, jax.random.key(3))
  params_io.save_model(str(tmp_path / "yx"), params, tiny_config)
  hf.yijax_to_hf(str(tmp_path / "yx"), str(tmp_path / "hf"))
  model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  tokens = _tokens(tiny_config.vocab_size)
  ref = _hf_logits(model, tokens)
  out = np.asarray(models.apply(tiny_config, params, tokens))
  assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4


def _edit_config(directory, **changes):
  path = os.path.join(directory, "config.json")
  values = json.load(open(path))
  values.update(changes)
  json.dump(values, open(path, "w"))


def _rewrite_tensors(directory, edit):
  from safetensors.numpy import load_file, save_file

  path = os.path.join(directory, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def _expect_failure(tmp_path, match):
  out = tmp_path / "out"
  with pytest.raises(hf.ConversionError, match=match):
    hf.hf_to_yijax(str(tmp_path / "hf"), str(out))
  assert not out.exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith("out.tmp")]


def test_missing_tensor_is_named(tmp_path, hf_llama):
  hf_llama(tmp_path / "hf")
  _rewrite_tensors(tmp_path / "hf", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  _expect_failure(tmp_path, r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight \(expected shape \(80, 48\)\)")


def test_wrong_shape_is_named(tmp_path, hf_llama):
  hf_llama(tmp_path / "hf")

  def edit(t):
    t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:8]

  _rewrite_tensors(tmp_path / "hf", edit)
  _expect_failure(tmp_path, r"k_proj\.weight: expected shape \(16, 48\).*found \(8, 48\)")


def test_vocab_mismatch_names_vocab_size(tmp_path, hf_llama):
  hf_llama(tmp_path / "hf")
  _edit_config(tmp_path / "hf", vocab_size=100)
  _expect_failure(tmp_path, r"embed_tokens\.weight: expected shape \(100, 48\).*found \(97, 48\).*vocab_size")


def test_unknown_architecture_is_refused(tmp_path, hf_llama):
  hf_llama(tmp_path / "hf")
  _edit_config(tmp_path / "hf", architectures=["GPT2LMHeadModel"], model_type="gpt2")
  _expect_failure(tmp_path, r"GPT2LMHeadModel.*not supported")


def test_pickle_checkpoint_is_refused_with_the_fix(tmp_path, hf_llama):
  hf_llama(tmp_path / "hf")
  os.remove(tmp_path / "hf" / "model.safetensors")
  (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"not read")
  _expect_failure(tmp_path, r"(?s)pytorch_model\.bin.*save_pretrained")


def test_existing_output_is_not_touched(tmp_path, hf_llama):
  hf_llama(tmp_path / "hf")
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  with pytest.raises(hf.ConversionError, match="not empty"):
    hf.hf_to_yijax(str(tmp_path / "hf"), str(tmp_path / "out"))
  assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_hf_config_round_trip_keeps_rope_scaling():
  config = hf.config_from_hf({
      "architectures": ["LlamaForCausalLM"], "vocab_size": 64000, "hidden_size": 4096,
      "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
      "num_key_value_heads": 4, "rope_theta": 5e6, "max_position_embeddings": 200000,
      "rope_scaling": {"type": "linear", "factor": 4.0},
  })
  assert config.rope_type == "linear" and config.rope_scaling == {"factor": 4.0}
  assert config.rope_theta == 5e6 and config.max_seq_len == 200000
  back = hf.config_from_hf(hf.config_to_hf(config, "bfloat16"))
  assert back.replace(param_dtype="float32") == config
