"""Model directories: a parameter pytree (orbax) beside its model config.

  DIR/model_config.json   ModelConfig as JSON
  DIR/params/             orbax checkpoint of the parameter pytree
  DIR/tokenizer.model     optional sentencepiece model that goes with it

`yijax convert` writes this layout, and every training checkpoint step holds
the same two entries, so `load_model` reads either (or a run directory, whose
latest complete checkpoint it picks). Any of them may be a local path or a
gs:// URL (paths.py).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from yijax.models.config import ModelConfig
from yijax import paths

MODEL_CONFIG = "model_config.json"
PARAMS = "params"
TOKENIZER = "tokenizer.model"


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not match; the message says which and why."""


def save_model(directory: str, params: Any, config: ModelConfig) -> None:
  """Writes params and config to `directory` (which must not hold params yet)."""
  directory = paths.resolve(directory, "model directory")
  paths.makedirs(directory)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(paths.path(paths.join(directory, PARAMS)), params)
  checkpointer.wait_until_finished()
  paths.write_text(paths.join(directory, MODEL_CONFIG), config.to_json())


@dataclasses.dataclass(frozen=True)
class ModelLocation:
  """Where a model's pieces are: its params checkpoint, its config, its tokenizer."""

  params_dir: str
  config_file: str
  tokenizer: str | None = None


def locate_model(path: str) -> ModelLocation:
  """A model dir, a training checkpoint step dir, or a run dir (its latest
  complete checkpoint; a half-written one is never taken)."""
  path = paths.resolve(path, "model path")
  params_dir = paths.join(path, PARAMS)
  tokenizer = paths.join(path, TOKENIZER)
  for config_file in (paths.join(path, MODEL_CONFIG), paths.join(path, "model_config", MODEL_CONFIG)):
    if paths.exists(config_file) and paths.isdir(params_dir):
      run_tokenizer = paths.join(paths.parent(paths.parent(path)), TOKENIZER)
      found = tokenizer if paths.exists(tokenizer) else run_tokenizer if paths.exists(run_tokenizer) else None
      return ModelLocation(params_dir, config_file, found)
  checkpoints = paths.join(path, "checkpoints")
  if paths.isdir(checkpoints):
    from yijax.train import checkpoint as run_checkpoint

    step = run_checkpoint.latest_complete_step(checkpoints)
    if step is not None:
      return locate_model(paths.join(checkpoints, str(step)))
  raise CheckpointError(
      f"{path} is not a yijax model: expected {MODEL_CONFIG} and {PARAMS}/ in it, a checkpoint step "
      "directory, or a run directory with a complete checkpoint under checkpoints/ (convert a Hugging "
      "Face model with `yijax convert hf-to-yijax --hf_dir=... --out=...`)"
  )


def resolve_model_dir(path: str) -> str:
  """The directory that holds the model's params/ (see locate_model)."""
  return paths.parent(locate_model(path).params_dir)


def read_model_config(path: str) -> ModelConfig:
  return ModelConfig.from_json(paths.read_text(locate_model(path).config_file))


def load_model(path: str, dtype: str | None = None, shardings: Any = None,
               as_numpy: bool = False) -> tuple[ModelConfig, Any]:
  """(config, params) from a model directory.

  dtype: cast every parameter (default: the config's param_dtype).
  shardings: a pytree of jax.sharding.Sharding to restore onto (default:
  one device). as_numpy: host numpy arrays in their stored dtype (for export).
  """
  location = locate_model(path)
  config = read_model_config(path)
  params_dir = location.params_dir
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = tree_metadata(params_dir)
  if as_numpy:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    return config, checkpointer.restore(params_dir, restore_args=restore_args)
  target_dtype = jnp.dtype(dtype or config.param_dtype)
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, metadata)
  target = jax.tree.map(
      lambda m, s: jax.ShapeDtypeStruct(tuple(m.shape), target_dtype, sharding=s), metadata, shardings
  )
  return config, ocp.StandardCheckpointer().restore(params_dir, target)


def tree_metadata(params_dir: str) -> Any:
  """The parameter tree of a params checkpoint, with ArrayMetadata (shape, dtype) leaves."""
  from etils import epath

  meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(params_dir))
  tree = getattr(meta, "tree", meta)
  return jax.tree.map(lambda m: m, tree, is_leaf=lambda m: hasattr(m, "shape"))


def params_shapes(path: str) -> dict[str, tuple]:
  """{"layers/attention/q_proj/kernel": shape, ...} of a model directory."""
  metadata = tree_metadata(locate_model(path).params_dir)
  flat = jax.tree_util.tree_flatten_with_path(metadata, is_leaf=lambda m: hasattr(m, "shape"))[0]
  return {"/".join(str(getattr(k, "key", k)) for k in p): tuple(m.shape) for p, m in flat}


def write_json(path: str, obj: Any) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
