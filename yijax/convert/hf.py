"""Hugging Face Llama/Yi safetensors <-> yijax model directories.

Yi checkpoints on the Hub are `LlamaForCausalLM`; the early remote-code
`YiForCausalLM` checkpoints differ only in the norm names (ln1/ln2), which are
read too. Each architecture family is a module of the registry `FAMILIES`:
`llama` (Llama / Yi / Mistral) and `hf_moe` (Mixtral / Qwen2-MoE, yijax MoE
models), both on the shared helpers and Llama tensor rules of `common`. Only safetensors are read (no pickle, no
code from the model directory is run). Tensors are streamed one at a time
into the stacked [layers, ...] arrays, so a conversion holds one copy of the model.

RoPE layout: Hugging Face q_proj/k_proj rows are already in the "rotate half"
order that `yijax.models.rope` uses, so they are only transposed/reshaped:
  q_proj.weight [heads*head_dim, embed] -> q_proj.kernel [embed, heads, head_dim]
  o_proj.weight [embed, heads*head_dim] -> o_proj.kernel [heads, head_dim, embed]
  {gate,up}_proj.weight [mlp, embed]    -> kernel [embed, mlp]
  down_proj.weight [embed, mlp]         -> kernel [mlp, embed]
  lm_head.weight [vocab, embed]         -> lm_head.kernel [embed, vocab]
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np

from yijax import paths
from yijax.convert import hf_moe, llama
from yijax.convert.common import (TOKENIZER_FILES, Staging, check_replaceable, get_path,  # noqa: F401 - re-exported
                                  np_dtype, set_path, tensor_rules)
from yijax.errors import ConversionError  # noqa: F401 - re-exported
from yijax.models.config import ModelConfig
from yijax.train import params_io

# the converter registry: each family module says which config.json it reads (matches) and which yijax
# models it writes (handles), and converts configs and tensors both ways; the first that matches is used
FAMILIES = (hf_moe, llama)


def _family_of_hf(hf: dict[str, Any], source: str):
  family = next((f for f in FAMILIES if f.matches(hf)), None)
  if family is None:
    supported = [a for f in FAMILIES for a in f.ARCHITECTURES]
    raise ConversionError(f"{source}: architectures={hf.get('architectures') or []} model_type="
                          f"{hf.get('model_type')!r} is not supported; yijax converts {', '.join(supported)}")
  return family


def _family_of(config: ModelConfig):
  return next(f for f in FAMILIES if f.handles(config))


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
  """A yijax ModelConfig from an HF config.json (any supported family)."""
  return _family_of_hf(hf, source).config_from_hf(hf, source)


def config_to_hf(config: ModelConfig, dtype: str, bos_id: int = 1, eos_id: int = 2) -> dict[str, Any]:
  """The HF config.json of a yijax model (its family's)."""
  return _family_of(config).config_to_hf(config, dtype, bos_id, eos_id)


def read_hf(hf_dir: str, dtype: str | None = None) -> tuple[ModelConfig, dict]:
  """(config, numpy parameter pytree) from an HF directory, checked tensor by tensor."""
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(config_path):
    raise ConversionError(f"{hf_dir}: no config.json")
  hf_config = paths.read_json(config_path, "the model config")
  if not isinstance(hf_config, dict):
    raise ConversionError(f"{config_path} must hold a JSON object (the model's config)")
  return _family_of_hf(hf_config, config_path).read_hf(hf_dir, hf_config, config_path, dtype)


def hf_to_yijax(hf_dir: str, out: str, dtype: str | None = None, overwrite: bool = False) -> ModelConfig:
  """Converts an HF Llama/Yi (or Mixtral / Qwen2-MoE) directory into a yijax model directory at `out`."""
  config, params = read_hf(hf_dir, dtype)
  with Staging(out, overwrite) as staging:
    params_io.save_model(staging, params, config)
    for name in TOKENIZER_FILES:
      if os.path.exists(os.path.join(hf_dir, name)):
        shutil.copy(os.path.join(hf_dir, name), os.path.join(staging, name))
  return config


# ----------------------------------------------------------------------------- yijax -> HF


def yijax_to_hf(ckpt: str, out: str, dtype: str | None = None, max_shard_bytes: int = 5 * 2**30,
                overwrite: bool = False, bos_id: int = 1, eos_id: int = 2) -> str:
  """Writes `config.json` and (sharded) safetensors for a yijax model directory."""
  from safetensors.numpy import save_file

  location = params_io.locate_model(ckpt)
  model_dir = paths.parent(location.params_dir)
  config, params = params_io.load_model(ckpt, as_numpy=True)
  out_dtype = dtype or str(np.asarray(params["embed"]["embedding"]).dtype)
  family = _family_of(config)
  hf_config = family.config_to_hf(config, out_dtype, bos_id, eos_id)  # refuses before anything is written
  tensors = family.hf_tensors(config, params, out_dtype)
  with Staging(out, overwrite) as staging:
    weight_map: dict[str, str] = {}
    shard: dict[str, np.ndarray] = {}
    shard_bytes, shard_names = 0, []

    def flush():
      nonlocal shard, shard_bytes
      if shard:
        name = f"model-{len(shard_names) + 1:05d}.safetensors"
        save_file(shard, os.path.join(staging, name), metadata={"format": "pt"})
        shard_names.append(name)
        weight_map.update({k: name for k in shard})
        shard, shard_bytes = {}, 0

    for name, tensor in tensors:
      if shard_bytes and shard_bytes + tensor.nbytes > max_shard_bytes:
        flush()
      shard[name] = tensor
      shard_bytes += tensor.nbytes
    flush()
    if len(shard_names) == 1:
      os.replace(os.path.join(staging, shard_names[0]), os.path.join(staging, "model.safetensors"))
    else:
      total = sum(os.path.getsize(os.path.join(staging, n)) for n in shard_names)
      renamed = {n: f"model-{i + 1:05d}-of-{len(shard_names):05d}.safetensors" for i, n in enumerate(shard_names)}
      for old, new in renamed.items():
        os.replace(os.path.join(staging, old), os.path.join(staging, new))
      params_io.write_json(os.path.join(staging, "model.safetensors.index.json"), {
          "metadata": {"total_size": total},
          "weight_map": {k: renamed[v] for k, v in weight_map.items()},
      })
    params_io.write_json(os.path.join(staging, "config.json"), hf_config)
    params_io.write_json(os.path.join(staging, "generation_config.json"),
                         {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False})
    for name in TOKENIZER_FILES:
      if paths.exists(paths.join(model_dir, name)):
        paths.copy_file(paths.join(model_dir, name), os.path.join(staging, name))
    if location.tokenizer and not os.path.exists(os.path.join(staging, "tokenizer.model")):
      paths.copy_file(location.tokenizer, os.path.join(staging, "tokenizer.model"))
  return out
