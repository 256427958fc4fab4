"""Hugging Face Llama/Yi safetensors <-> yijax model directories.

Yi checkpoints on the Hub are `LlamaForCausalLM`; the early remote-code
`YiForCausalLM` checkpoints differ only in the norm names (ln1/ln2), which are
read too. `MixtralForCausalLM` and `Qwen2MoeForCausalLM` (yijax MoE models)
are dispatched to `yijax.convert.hf_moe`, which reuses these rules for
attention, norms and dense layers. Only safetensors are read (no pickle, no
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

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np

from yijax import paths
from yijax.models.config import ConfigError, ModelConfig
from yijax.train import params_io
from yijax.errors import ConversionError  # noqa: F401 - re-exported

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "YiForCausalLM", "MistralForCausalLM")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)



@dataclasses.dataclass(frozen=True)
class TensorRule:
  """How one HF tensor maps onto one yijax parameter (per layer when `layered`)."""

  hf_name: str  # with {i} for the layer index
  path: tuple[str, ...]
  to_yijax: Callable[[np.ndarray, ModelConfig], np.ndarray]
  to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]
  layered: bool = True


def _heads_in(n_heads_attr):
  def to_yijax(w, c):
    return w.T.reshape(c.hidden_size, getattr(c, n_heads_attr), c.resolved_head_dim)

  def to_hf(k, c):
    return k.reshape(c.hidden_size, -1).T

  return to_yijax, to_hf


def _transpose(w, c):
  return w.T


def _identity(w, c):
  return w


def tensor_rules(config: ModelConfig) -> list[TensorRule]:
  q_in, q_out = _heads_in("num_heads")
  kv_in, kv_out = _heads_in("num_kv_heads")
  attn = "model.layers.{i}.self_attn."
  mlp = "model.layers.{i}.mlp."
  rules = [
      TensorRule("model.embed_tokens.weight", ("embed", "embedding"), _identity, _identity, False),
      TensorRule("model.norm.weight", ("final_norm", "scale"), _identity, _identity, False),
      TensorRule("model.layers.{i}.input_layernorm.weight", ("layers", "attention_norm", "scale"), _identity, _identity),
      TensorRule("model.layers.{i}.post_attention_layernorm.weight", ("layers", "mlp_norm", "scale"), _identity, _identity),
      TensorRule(attn + "q_proj.weight", ("layers", "attention", "q_proj", "kernel"), q_in, q_out),
      TensorRule(attn + "k_proj.weight", ("layers", "attention", "k_proj", "kernel"), kv_in, kv_out),
      TensorRule(attn + "v_proj.weight", ("layers", "attention", "v_proj", "kernel"), kv_in, kv_out),
      TensorRule(
          attn + "o_proj.weight", ("layers", "attention", "o_proj", "kernel"),
          lambda w, c: w.T.reshape(c.num_heads, c.resolved_head_dim, c.hidden_size),
          lambda k, c: k.reshape(-1, c.hidden_size).T,
      ),
      TensorRule(mlp + "gate_proj.weight", ("layers", "mlp", "gate_proj", "kernel"), _transpose, _transpose),
      TensorRule(mlp + "up_proj.weight", ("layers", "mlp", "up_proj", "kernel"), _transpose, _transpose),
      TensorRule(mlp + "down_proj.weight", ("layers", "mlp", "down_proj", "kernel"), _transpose, _transpose),
  ]
  if not config.tie_embeddings:
    rules.append(TensorRule("lm_head.weight", ("lm_head", "kernel"), _transpose, _transpose, False))
  return rules


def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  h, e, f, v = config.num_heads * config.resolved_head_dim, config.hidden_size, config.mlp_dim, config.vocab_size
  kv = config.num_kv_heads * config.resolved_head_dim
  per_layer = {
      "input_layernorm.weight": (e,), "post_attention_layernorm.weight": (e,),
      "self_attn.q_proj.weight": (h, e), "self_attn.k_proj.weight": (kv, e),
      "self_attn.v_proj.weight": (kv, e), "self_attn.o_proj.weight": (e, h),
      "mlp.gate_proj.weight": (f, e), "mlp.up_proj.weight": (f, e), "mlp.down_proj.weight": (e, f),
  }
  shapes = {"model.embed_tokens.weight": (v, e), "model.norm.weight": (e,)}
  if not config.tie_embeddings:
    shapes["lm_head.weight"] = (v, e)
  for i in range(config.num_layers):
    shapes.update({f"model.layers.{i}.{k}": s for k, s in per_layer.items()})
  return shapes


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
  from yijax.convert import hf_moe

  if hf_moe.is_moe_hf(hf):
    return hf_moe.config_from_hf(hf, source)
  archs = hf.get("architectures") or []
  if not any(a in SUPPORTED_ARCHITECTURES for a in archs) and hf.get("model_type") not in ("llama", "Yi", "mistral"):
    raise ConversionError(
        f"{source}: architectures={archs} model_type={hf.get('model_type')!r} is not supported; "
        f"yijax converts Llama-architecture models ({', '.join(SUPPORTED_ARCHITECTURES)}) and the MoE "
        f"models {', '.join(hf_moe.ARCHITECTURES)}"
    )
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


# ----------------------------------------------------------------------------- HF -> yijax


class SafetensorsReader:
  """Lazy access to the tensors of an HF directory (single file or sharded with index)."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.exists(index):
      index_value = paths.read_json(index, "the safetensors index")
      weight_map = index_value.get("weight_map") if isinstance(index_value, dict) else None
      if not isinstance(weight_map, dict):
        raise ConversionError(f"{index} has no \"weight_map\" object (tensor name -> file)")
      root = os.path.realpath(hf_dir)
      self.files = {}
      for name, file in weight_map.items():
        path = os.path.realpath(os.path.join(hf_dir, str(file)))
        if os.path.dirname(path) != root:
          raise ConversionError(f"{index}: tensor {name} points to {file!r}, outside {hf_dir}; an index may only "
                                "name safetensors files in its own directory")
        self.files[name] = path
    elif os.path.exists(single):
      with _open_safetensors(single) as f:
        self.files = {name: single for name in f.keys()}
    else:
      pickles = [p for p in os.listdir(hf_dir) if p.endswith((".bin", ".pt", ".pth", ".ckpt"))]
      hint = (
          f" It holds {pickles}: pickle checkpoints are not read (they can run code). Convert it to "
          f"safetensors first, in an environment you trust, with:\n  python -c \"from transformers import "
          f"AutoModelForCausalLM as M; M.from_pretrained('{hf_dir}').save_pretrained('{hf_dir}-safetensors')\""
          if pickles else ""
      )
      raise ConversionError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json.{hint}")
    self._open: dict[str, Any] = {}

  def names(self) -> list[str]:
    return list(self.files)

  def get(self, name: str) -> np.ndarray:
    file = self.files[name]
    if not os.path.exists(file):
      raise ConversionError(f"tensor {name}: file {file} named by the index is missing")
    if file not in self._open:
      self._open[file] = _open_safetensors(file)
    try:
      return self._open[file].get_tensor(name)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
      raise ConversionError(f"{file}: tensor {name} cannot be read ({_first_line(e)}); the file is damaged or "
                            "truncated: download or export it again") from None


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def _open_safetensors(file: str):
  """safe_open, with a damaged or hostile file (truncated, bad offsets, an absurd header) refused in one
  line naming it. The header is checked before safetensors reads it."""
  from safetensors import safe_open

  size = os.path.getsize(file)
  with open(file, "rb") as f:
    prefix = f.read(8)
  header = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
  if header < 2 or header > min(size - 8, 100 * 2**20):
    raise ConversionError(f"{file} is not a safetensors file: its header length field says {header} bytes in a "
                          f"file of {size} bytes; the file is damaged or truncated: download or export it again")
  try:
    return safe_open(file, framework="numpy")
  except Exception as e:  # noqa: BLE001
    raise ConversionError(f"{file} is not a readable safetensors file ({_first_line(e)}); the file is damaged or "
                          "truncated: download or export it again") from None


def _norm_aliases(name: str) -> str:
  return name.replace(".ln1.", ".input_layernorm.").replace(".ln2.", ".post_attention_layernorm.")


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def read_hf(hf_dir: str, dtype: str | None = None) -> tuple[ModelConfig, dict]:
  """(config, numpy parameter pytree) from an HF directory, checked tensor by tensor."""
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(config_path):
    raise ConversionError(f"{hf_dir}: no config.json")
  hf_config = paths.read_json(config_path, "the model config")
  if not isinstance(hf_config, dict):
    raise ConversionError(f"{config_path} must hold a JSON object (the model's config)")
  from yijax.convert import hf_moe

  if hf_moe.is_moe_hf(hf_config):
    return hf_moe.read_hf(hf_dir, hf_config, config_path, dtype)
  config = config_from_hf(hf_config, config_path)
  reader = SafetensorsReader(hf_dir)
  available = {_norm_aliases(n): n for n in reader.names() if not n.endswith(IGNORED_SUFFIXES)}
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


def np_dtype(name: str):
  import jax.numpy as jnp

  return np.dtype(jnp.dtype(name))


# what a model directory this tool writes may hold: --overwrite replaces only such a directory
MODEL_DIR_FILES = {"model_config.json", "params", "checksums.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "tokenizer.json", "config.json", "generation_config.json",
                   "model.safetensors", "model.safetensors.index.json", "surgery.json", "data"}


def check_replaceable(out: str) -> None:
  """--overwrite deletes `out`: allowed only for a model directory yijax could have written (a yijax model
  dir or an HF safetensors export), never a directory holding anything else."""
  names = set(os.listdir(out))
  foreign = sorted(n for n in names if n not in MODEL_DIR_FILES
                   and not (n.startswith("model-") and n.endswith(".safetensors")))
  is_model = {"model_config.json", "params"} <= names or ("config.json" in names and any(
      n.endswith(".safetensors") for n in names))
  if foreign or not is_model:
    raise ConversionError(
        f"--out={out} is not a model directory yijax wrote (it holds {sorted(foreign or names)[:5]}); --overwrite "
        "only replaces one. Choose another --out, or remove the directory yourself if you mean to")


@dataclasses.dataclass
class _Staging:
  """Writes into a temporary sibling of `out` and renames it at the end, so a
  failed conversion leaves nothing at `out`."""

  out: str
  overwrite: bool = False

  def __enter__(self) -> str:
    self.out = os.path.abspath(self.out)
    paths.check_output_dir(self.out)
    if os.path.exists(self.out) and os.listdir(self.out):
      if not self.overwrite:
        raise ConversionError(f"--out={self.out} exists and is not empty; choose another path or pass --overwrite")
      check_replaceable(self.out)
    parent = os.path.dirname(self.out)
    os.makedirs(parent, exist_ok=True)
    self.tmp = tempfile.mkdtemp(prefix=os.path.basename(self.out) + ".tmp-", dir=parent)
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      shutil.rmtree(self.tmp, ignore_errors=True)
      return False
    paths.user_mode_tree(self.tmp)
    if os.path.exists(self.out):
      shutil.rmtree(self.out)
    os.replace(self.tmp, self.out)
    return False


def hf_to_yijax(hf_dir: str, out: str, dtype: str | None = None, overwrite: bool = False) -> ModelConfig:
  """Converts an HF Llama/Yi (or Mixtral / Qwen2-MoE) directory into a yijax model directory at `out`."""
  config, params = read_hf(hf_dir, dtype)
  with _Staging(out, overwrite) as staging:
    params_io.save_model(staging, params, config)
    for name in TOKENIZER_FILES:
      if os.path.exists(os.path.join(hf_dir, name)):
        shutil.copy(os.path.join(hf_dir, name), os.path.join(staging, name))
  return config


# ----------------------------------------------------------------------------- yijax -> HF


def _dense_tensors(config: ModelConfig, params: dict, out_dtype: str):
  """(name, tensor) of a dense model, rule by rule, one layer slice at a time."""
  for rule in tensor_rules(config):
    value = np.asarray(get_path(params, rule.path))
    slices = [(rule.hf_name.format(i=i), value[i]) for i in range(config.num_layers)] if rule.layered \
        else [(rule.hf_name, value)]
    for name, tensor in slices:
      yield name, np.ascontiguousarray(rule.to_hf(tensor, config).astype(np_dtype(out_dtype)))


def yijax_to_hf(ckpt: str, out: str, dtype: str | None = None, max_shard_bytes: int = 5 * 2**30,
                overwrite: bool = False, bos_id: int = 1, eos_id: int = 2) -> str:
  """Writes `config.json` and (sharded) safetensors for a yijax model directory."""
  from safetensors.numpy import save_file

  location = params_io.locate_model(ckpt)
  model_dir = paths.parent(location.params_dir)
  config, params = params_io.load_model(ckpt, as_numpy=True)
  out_dtype = dtype or str(np.asarray(params["embed"]["embedding"]).dtype)
  if config.is_moe:
    from yijax.convert import hf_moe

    hf_config = hf_moe.config_to_hf(config, out_dtype, bos_id, eos_id)  # refuses before anything is written
    tensors = hf_moe.hf_tensors(config, params, out_dtype)
  else:
    hf_config = config_to_hf(config, out_dtype, bos_id, eos_id)
    tensors = _dense_tensors(config, params, out_dtype)
  with _Staging(out, overwrite) as staging:
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
