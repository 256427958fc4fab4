"""Depth surgery: index orders, exact copies through HF export, logits of a stacked model against a
reference composition, layer cosine against transformers, sharded gathers, the commands."""

import json
import os

import jax
import numpy as np
import pytest
import torch

from yijax import cli, models, sharding, surgery
from yijax.analysis import layer_cosine
from yijax.convert import hf
from yijax.models.config import ConfigError, ModelConfig
from yijax.models.layers import RMSNorm
from yijax.models.transformer import DecoderBlock
from yijax.train import params_io

LAYER_TENSORS = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                 "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                 "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")


def test_orders_and_their_errors():
  assert surgery.stack_order(3, 2) == [0, 1, 2, 0, 1, 2]
  assert surgery.interpolation_order(3, 2) == [0, 0, 1, 1, 2, 2]
  yi_9b = surgery.block_order(32, 12, 28)
  assert yi_9b == list(range(28)) + list(range(12, 28)) + list(range(28, 32)) and len(yi_9b) == 48
  assert surgery.block_order(32, 8, 24) == list(range(24)) + list(range(8, 32))  # SOLAR-10.7B
  assert surgery.new_layer_mask([0, 1, 0, 2, 1]).tolist() == [False, False, True, False, True]
  with pytest.raises(ConfigError, match=r"names layers \[4\] but the source has 4"):
    surgery.check_order([0, 4], 4)
  with pytest.raises(ConfigError, match="block 3:3"):
    surgery.block_order(8, 3, 3)
  moe = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=32,
                    num_experts=4, expert_mlp_dim=16)
  with pytest.raises(ConfigError, match="dense model whose layers are all alike"):
    surgery.grown_config(moe, [0, 1, 1])


def test_select_block_and_growth_timing():
  cosine = [0.5, 0.80, 0.90, 0.95, 0.97, 0.99, 0.6, 0.7]
  assert surgery.select_block(cosine, 4) == (2, 6)                      # layers 1..5 eligible
  assert surgery.select_block(cosine, 4, "min_cosine") == (1, 5)
  assert surgery.select_block(cosine, 4, "middle") == (2, 6)
  assert layer_cosine.model_level_cosine(cosine) == pytest.approx(np.mean(cosine[1:6]))
  with pytest.raises(ConfigError, match="does not fit"):
    surgery.select_block(cosine, 6)
  # 7B target on 300B tokens: the paper's fit says grow after ~20B tokens
  assert surgery.growth_tokens(7e9, 300e9) == pytest.approx(2.05e10, rel=0.01)
  assert surgery.growth_tokens(1e8, 2e9) > 2e9  # below ~1B parameters (at D = 20 N) the fit gives d > D


def _reference_logits(config, params, order, tokens):
  """The source's layers composed one by one in `order`, outside any scan."""
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  x = params["embed"]["embedding"][tokens]
  for i in order:
    layer = jax.tree.map(lambda a: a[i], params["layers"])
    x, _ = DecoderBlock(config).apply({"params": layer}, x, positions, None, None)
  x = RMSNorm(config.norm_eps).apply({"params": params["final_norm"]}, x)
  return np.asarray(x @ params["lm_head"]["kernel"])


def test_stacked_logits_equal_a_reference_composition(tiny_config):
  config = tiny_config.replace(num_layers=3)
  params = models.init_params(config, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 11))
  order = [0, 1, 2, 1, 2, 0, 0]
  grown = surgery.duplicate_layers(params, order)
  grown_config = surgery.grown_config(config, order)
  out = np.asarray(models.apply(grown_config, grown, tokens))
  np.testing.assert_allclose(out, _reference_logits(config, params, order, tokens), rtol=1e-5, atol=1e-5)
  # zero: identity copies, the source's function exactly; random: originals kept, new layers fresh
  zero = surgery.duplicate_layers(params, order, new_layers="zero")
  np.testing.assert_allclose(np.asarray(models.apply(grown_config, zero, tokens)),
                             np.asarray(models.apply(config, params, tokens)), rtol=1e-5, atol=1e-5)
  fresh = surgery.duplicate_layers(params, order, new_layers="random", config=config, rng=jax.random.key(1))
  up, source_up = fresh["layers"]["mlp"]["up_proj"]["kernel"], params["layers"]["mlp"]["up_proj"]["kernel"]
  for i, src in enumerate(order):
    assert np.array_equal(up[i], source_up[src]) == (not surgery.new_layer_mask(order)[i])


def test_sharded_duplicate_stays_sharded_and_equal(tiny_config):
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  config = tiny_config.replace(num_layers=3)
  params = models.init_params(config, jax.random.key(0), mesh=mesh)
  order = surgery.stack_order(3, 2)
  grown = surgery.duplicate_layers(params, order, config=config, mesh=mesh)
  expected = models.param_shardings(surgery.grown_config(config, order), mesh)
  for (path, leaf), want in zip(jax.tree_util.tree_flatten_with_path(grown)[0], jax.tree.leaves(expected)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), jax.tree_util.keystr(path)
  kernel = grown["layers"]["mlp"]["up_proj"]["kernel"]  # [layers, embed/fsdp, mlp/tensor]
  assert kernel.addressable_shards[0].data.shape == (6, 32, 24)
  np.testing.assert_array_equal(np.asarray(kernel), np.asarray(params["layers"]["mlp"]["up_proj"]["kernel"])[order])


def _safetensors(directory):
  from safetensors.numpy import load_file

  tensors = {}
  for name in os.listdir(directory):
    if name.endswith(".safetensors"):
      tensors.update(load_file(os.path.join(directory, name)))
  return tensors


def test_imported_model_duplicated_and_exported_has_the_source_tensors(tmp_path, hf_llama, capsys):
  hf_llama(tmp_path / "hf", num_hidden_layers=4)
  hf.hf_to_yijax(str(tmp_path / "hf"), str(tmp_path / "yx"))
  order = [0, 1, 2, 3, 1, 2, 3, 0]
  code = cli.main(["yijax", "surgery", f"--ckpt={tmp_path / 'yx'}", f"--out={tmp_path / 'grown'}",
                   f"--layer_order={','.join(map(str, order))}"])
  assert code == 0
  summary = json.loads(capsys.readouterr().out.splitlines()[0])
  assert summary["layers"] == 8 and summary["order"] == order and not summary["data_state"]
  hf.yijax_to_hf(str(tmp_path / "grown"), str(tmp_path / "hf_grown"))
  source, grown = _safetensors(tmp_path / "hf"), _safetensors(tmp_path / "hf_grown")
  assert json.load(open(tmp_path / "hf_grown" / "config.json"))["num_hidden_layers"] == 8
  for i, src in enumerate(order):
    for name in LAYER_TENSORS:
      np.testing.assert_array_equal(grown[f"model.layers.{i}.{name}"], source[f"model.layers.{src}.{name}"])
  for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
    np.testing.assert_array_equal(grown[name], source[name])
  assert cli.main(["yijax", "surgery", f"--ckpt={tmp_path / 'yx'}", f"--out={tmp_path / 'x'}", "--stack=2",
                   "--yi_upscale=1:3"]) == 1
  assert "exactly one of --layer_order, --stack" in capsys.readouterr().err
  assert cli.main(["yijax", "surgery", f"--ckpt={tmp_path / 'yx'}", f"--out={tmp_path / 'x'}",
                   "--yi_upscale=1:9"]) == 1
  assert "block 1:9 must satisfy 0 <= start < end <= num_layers=4" in capsys.readouterr().err


def test_layer_cosine_equals_transformers_hidden_states(tmp_path, hf_llama):
  model = hf_llama(tmp_path / "hf", num_hidden_layers=4)
  hf.hf_to_yijax(str(tmp_path / "hf"), str(tmp_path / "yx"))
  config, params = params_io.load_model(str(tmp_path / "yx"))
  tokens = np.random.default_rng(1).integers(0, config.vocab_size, (2, 23))
  model.config.tie_last_hidden_states = False  # hidden_states[-1]: the last layer's output, before the final norm
  with torch.no_grad():
    states = [h.double() for h in model(torch.tensor(tokens), output_hidden_states=True).hidden_states]
  expected = [torch.nn.functional.cosine_similarity(a, b, dim=-1)[:, 1:].mean().item()
              for a, b in zip(states[:-1], states[1:])]
  result = layer_cosine.layer_cosine(config, params, tokens)
  np.testing.assert_allclose(result["per_layer"], expected, atol=2e-6)
  assert result["model_level"] == pytest.approx(expected[1], abs=2e-6)  # 4 layers: only layer 1 is inner
  assert result["tokens"] == 2 * 22


def test_analyze_layer_cosine_command(tmp_path, prepared_data, capsys):
  from yijax.data import pipeline

  tokenizer = pipeline.read_manifest(prepared_data)["tokenizer"]["path"]
  config = ModelConfig(vocab_size=4096, hidden_size=32, num_layers=6, num_heads=2, num_kv_heads=1, mlp_dim=48,
                       rope_theta=1e4, max_seq_len=128)
  params_io.save_model(str(tmp_path / "model"), models.init_params(config, jax.random.key(0)), config)
  text = "def f(x):\n    return x + 1\n" * 20
  code = cli.main(["yijax", "analyze", "layer-cosine", f"--ckpt={tmp_path / 'model'}", f"--tokenizer={tokenizer}",
                   f"--text={text}", "--max_tokens=64", "--block_size=2"])
  assert code == 0
  result = json.loads(capsys.readouterr().out)
  assert len(result["per_layer"]) == 6 and result["tokens"] == 63
  start, end = result["block"]["start"], result["block"]["end"]
  assert (start, end) == surgery.select_block(result["per_layer"], 2) and result["block"]["yi_upscale"] == f"{start}:{end}"
  assert result["model_level"] == pytest.approx(np.mean(result["per_layer"][1:4]))
