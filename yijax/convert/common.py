"""What the Hugging Face converters share: Llama's tensor rules (attention, norms, dense MLPs; the MoE
converter reuses them), safetensors reading that refuses damaged or hostile files, pytree paths, dtypes, and
the staged output directory (a failed conversion leaves nothing at --out)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np

from yijax import paths
from yijax.errors import ConversionError
from yijax.models.config import ModelConfig

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


def norm_aliases(name: str) -> str:
  return name.replace(".ln1.", ".input_layernorm.").replace(".ln2.", ".post_attention_layernorm.")


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


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
class Staging:
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


