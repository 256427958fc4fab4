"""The dense Llama family (LlamaForCausalLM, early remote-code YiForCausalLM, all-sliding MistralForCausalLM)
<-> yijax dense models: one entry of the converter registry in yijax/convert/hf.py."""

from __future__ import annotations

from typing import Any

import numpy as np

from yijax.convert.common import (IGNORED_SUFFIXES, ConversionError, SafetensorsReader, expected_hf_shapes,
                                  get_path, norm_aliases, np_dtype, set_path, tensor_rules)
from yijax.models.config import ConfigError, ModelConfig

ARCHITECTURES = ("LlamaForCausalLM", "YiForCausalLM", "MistralForCausalLM")
MODEL_TYPES = ("llama", "Yi", "mistral")


def matches(hf: dict[str, Any]) -> bool:
  """Whether a config.json is of this family."""
  return any(a in ARCHITECTURES for a in hf.get("architectures") or []) or hf.get("model_type") in MODEL_TYPES


def handles(config: ModelConfig) -> bool:
  """Whether a yijax model exports as this family."""
  return not config.is_moe


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
  """A dense ModelConfig from a Llama / Yi / Mistral config.json."""
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ConversionError(f"{source}: {flag}=true is not supported by the yijax dense model")
  act = hf.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise ConversionError(f"{source}: hidden_act={act!r}; yijax's SwiGLU needs 'silu'")
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads") if k not in hf]
  if missing:
    raise ConversionError(f"{source}: missing field(s) {missing}")
  rope_params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  theta = rope_params.pop("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = rope_params.pop("rope_type", None) or scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
  scaling.pop("rope_type", None)
  scaling.pop("type", None)
  scaling.update(rope_params)
  dtype = str(hf.get("dtype") or hf.get("torch_dtype") or "float32")
  window = hf.get("sliding_window") or 0  # Mistral: every layer sees its last `sliding_window` tokens
  if window >= hf.get("max_position_embeddings", 4096):
    window = 0
  config = ModelConfig(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      head_dim=hf.get("head_dim") or 0,
      mlp_dim=hf["intermediate_size"],
      rope_theta=float(theta),
      rope_type=rope_type,
      rope_scaling_params=tuple(sorted((k, v) for k, v in scaling.items() if v is not None)),
      max_seq_len=hf.get("max_position_embeddings", 4096),
      norm_eps=hf.get("rms_norm_eps", 1e-5),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      init_std=hf.get("initializer_range", 0.02),
      param_dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "float32",
      attention_pattern="S" if window else "",
      sliding_window=window,
  )
  try:
    config.validate()
    return config.replace(head_dim=config.resolved_head_dim)
  except ConfigError as e:
    raise ConversionError(f"{source}: {e}") from None


def config_to_hf(config: ModelConfig, dtype: str, bos_id: int = 1, eos_id: int = 2) -> dict[str, Any]:
  """The config.json of a dense yijax model (MoE models: `hf_moe.config_to_hf`): Llama,
  or Mistral when every layer is sliding-window; other hybrid layouts have no HF twin."""
  sliding = bool(config.attention_pattern) and set(config.attention_pattern) == {"S"}
  if (config.attention_pattern and not sliding) or config.kv_share_group > 1:
    raise ConversionError(
        f"model.attention_pattern={config.attention_pattern!r} / model.kv_share_group={config.kv_share_group} "
        "has no Hugging Face Llama-family equivalent (only all-full = Llama and all-sliding = Mistral export)")
  scaling = None
  if config.rope_type != "default":
    scaling = {"rope_type": config.rope_type, **config.rope_scaling}
  extra = {"sliding_window": config.sliding_window} if sliding else {}
  return {
      "architectures": ["MistralForCausalLM" if sliding else "LlamaForCausalLM"],
      "model_type": "mistral" if sliding else "llama",
      **extra,
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.resolved_head_dim,
      "max_position_embeddings": config.max_seq_len,
      "rms_norm_eps": config.norm_eps,
      "rope_theta": config.rope_theta,
      "rope_scaling": scaling,
      "tie_word_embeddings": config.tie_embeddings,
      "hidden_act": "silu",
      "attention_bias": False,
      "mlp_bias": False,
      "initializer_range": config.init_std,
      "torch_dtype": dtype,
      "bos_token_id": bos_id,
      "eos_token_id": eos_id,
  }


def read_hf(hf_dir: str, hf_config: dict[str, Any], config_path: str,
            dtype: str | None = None) -> tuple[ModelConfig, dict]:
  """(config, numpy parameter pytree) from an HF Llama-family directory, checked tensor by tensor."""
  config = config_from_hf(hf_config, config_path)
  reader = SafetensorsReader(hf_dir)
  available = {norm_aliases(n): n for n in reader.names() if not n.endswith(IGNORED_SUFFIXES)}
  expected = expected_hf_shapes(config)
  unexpected = sorted(set(available) - set(expected))
  if unexpected:
    raise ConversionError(
        f"{hf_dir}: unexpected tensor(s) {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} for a "
        f"{config.num_layers}-layer Llama model (tie_word_embeddings={config.tie_embeddings})"
    )
  missing = [n for n in expected if n not in available]
  if missing:
    raise ConversionError(f"{hf_dir}: missing tensor {missing[0]} (expected shape {expected[missing[0]]})"
                          + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
  params: dict = {}
  for rule in tensor_rules(config):
    names = [rule.hf_name.format(i=i) for i in range(config.num_layers)] if rule.layered else [rule.hf_name]
    stacked = None
    for i, name in enumerate(names):
      tensor = reader.get(available[name])
      if tuple(tensor.shape) != expected[name]:
        field = "vocab_size" if name in ("model.embed_tokens.weight", "lm_head.weight") else "shape fields"
        raise ConversionError(
            f"tensor {name}: expected shape {expected[name]} from config.json, found {tuple(tensor.shape)} "
            f"(check config.json's {field})"
        )
      value = rule.to_yijax(tensor, config)
      if dtype:
        value = value.astype(np_dtype(dtype))
      if not rule.layered:
        stacked = np.ascontiguousarray(value)
        continue
      if stacked is None:
        stacked = np.empty((config.num_layers,) + value.shape, value.dtype)
      stacked[i] = value
    set_path(params, rule.path, stacked)
  if dtype:
    config = config.replace(param_dtype=dtype)
  return config, params


def hf_tensors(config: ModelConfig, params: dict, out_dtype: str):
  """(name, tensor) of a dense model, rule by rule, one layer slice at a time."""
  for rule in tensor_rules(config):
    value = np.asarray(get_path(params, rule.path))
    slices = [(rule.hf_name.format(i=i), value[i]) for i in range(config.num_layers)] if rule.layered \
        else [(rule.hf_name, value)]
    for name, tensor in slices:
      yield name, np.ascontiguousarray(rule.to_hf(tensor, config).astype(np_dtype(out_dtype)))


