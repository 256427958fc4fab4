"""Model directories: a parameter pytree (orbax) beside its model config.

  DIR/model_config.json   ModelConfig as JSON
  DIR/params/             orbax checkpoint of the parameter pytree
  DIR/tokenizer.model     optional sentencepiece model that goes with it
  DIR/checksums.json      a checksum of every parameter array (integrity.py), verified on load

`load_model` refuses parameters whose checksum differs from the one written at save (naming the
parameter); given a run directory, it takes the newest checkpoint that reads and verifies and says
which older one it used when the newest is damaged.

`yijax convert` writes this layout, and every training checkpoint step holds
the same two entries, so `load_model` reads either (or a run directory, whose
latest complete checkpoint it picks). Any of them may be a local path or a
gs:// URL (paths.py).
"""

from __future__ import annotations

import logging
import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from yijax.models.config import ModelConfig
from yijax import models, paths
from yijax.errors import CheckpointError  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

MODEL_CONFIG = "model_config.json"
PARAMS = "params"
TOKENIZER = "tokenizer.model"



def save_model(directory: str, params: Any, config: ModelConfig) -> None:
  """Writes params and config to `directory` (which must not hold params yet)."""
  directory = paths.resolve(directory, "model directory")
  paths.makedirs(directory)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(paths.path(paths.join(directory, PARAMS)), params)
  checkpointer.wait_until_finished()
  from yijax.train import integrity

  paths.write_text(paths.join(directory, integrity.FILE), json.dumps({"params": integrity.checksums(params)}, indent=1))
  paths.write_text(paths.join(directory, MODEL_CONFIG), config.to_json())


@dataclasses.dataclass(frozen=True)
class ModelLocation:
  """Where a model's pieces are: its params checkpoint, its config, its tokenizer."""

  params_dir: str
  config_file: str
  tokenizer: str | None = None
  checksums: str | None = None  # checksums.json ({"params": {...}}; a checkpoint step's checksums item)


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
      sums = [paths.join(path, "checksums.json"), paths.join(path, "checksums", "checksums.json")]
      return ModelLocation(params_dir, config_file, found, next((f for f in sums if paths.exists(f)), None))
  checkpoints = paths.join(path, "checkpoints")
  if paths.isdir(checkpoints):
    step = latest_complete_step(checkpoints)
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
  config_file = locate_model(path).config_file
  text = paths.read_text(config_file)
  try:
    return ModelConfig.from_json(text)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{config_file} is not valid JSON ({e}); the model directory is damaged") from None


def load_model(path: str, dtype: str | None = None, shardings: Any = None,
               as_numpy: bool = False, mesh=None, rules=None) -> tuple[ModelConfig, Any]:
  """(config, params) from a model directory, a checkpoint step or a run directory.

  dtype: cast every parameter (default: the config's param_dtype).
  shardings: a pytree of jax.sharding.Sharding to restore onto (default:
  one device); mesh (and rules): restore each parameter straight into its
  logical-axis sharding on that mesh. as_numpy: host numpy arrays in their
  stored dtype (for export).
  Every parameter is checked against its saved checksum. A run directory whose newest checkpoint is
  damaged falls back to the newest one that verifies, saying so in one line.
  """
  steps = _run_steps(path)
  if not steps:
    return _load_verified(path, dtype, shardings, as_numpy, mesh, rules)
  errors = []
  for step_dir in reversed(steps):
    try:
      loaded = _load_verified(step_dir, dtype, shardings, as_numpy, mesh, rules)
    except CheckpointError as e:
      errors.append(str(e))
      log.warning(f"yijax: skipping damaged checkpoint step {paths.basename(step_dir)}: {e}")
      continue
    if errors:
      log.warning(f"yijax: using checkpoint step {paths.basename(step_dir)} of {path} (the newer ones are damaged)")
    return loaded
  raise CheckpointError(f"{path}: no checkpoint reads and verifies; the newest: {errors[0]}")


def complete_steps(checkpoints_dir: str) -> list[int]:
  """The committed steps under a checkpoints dir, oldest first: orbax's finalized
  steps (temporary dirs and, on GCS, steps without commit_success.txt left out)
  that hold params."""
  if not paths.isdir(checkpoints_dir):
    return []
  steps = ocp.step.checkpoint_steps(paths.path(checkpoints_dir))
  return sorted(s for s in steps if paths.isdir(paths.join(checkpoints_dir, str(s), "params")))


def latest_complete_step(checkpoints_dir: str) -> int | None:
  """The newest committed step under a checkpoints dir (None when there is none)."""
  steps = complete_steps(checkpoints_dir)
  return steps[-1] if steps else None


def _run_steps(path: str) -> list[str]:
  """The complete checkpoint step dirs of a run directory, oldest first ([] for any other path)."""
  resolved = paths.resolve(path, "model path")
  if paths.exists(paths.join(resolved, PARAMS)) or not paths.isdir(paths.join(resolved, "checkpoints")):
    return []
  checkpoints = paths.join(resolved, "checkpoints")
  return [paths.join(checkpoints, str(s)) for s in complete_steps(checkpoints)]


def _load_verified(path: str, dtype: str | None, shardings: Any, as_numpy: bool, mesh=None,
                   rules=None) -> tuple[ModelConfig, Any]:
  from yijax.train import integrity

  location = locate_model(path)
  config = read_model_config(path)
  if mesh is not None and shardings is None and not as_numpy:
    shardings = models.param_shardings(config, mesh, rules)
  params_dir = location.params_dir
  metadata_file = paths.join(params_dir, "_METADATA")
  if paths.exists(metadata_file):
    try:
      json.loads(paths.read_text(metadata_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{metadata_file} is not valid JSON ({e}); the checkpoint is damaged") from None
  metadata = tree_metadata(params_dir)
  try:
    if as_numpy:
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
      params = ocp.PyTreeCheckpointer().restore(params_dir, restore_args=restore_args)
    else:
      if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, metadata)
      # restored in the stored dtype, verified, then cast
      target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=s), metadata,
                            shardings)
      params = ocp.StandardCheckpointer().restore(params_dir, target)
  except Exception as e:  # noqa: BLE001 - any failure to read stored arrays means the directory is damaged
    text = str(e).strip().splitlines()
    raise CheckpointError(f"{params_dir} cannot be read: {type(e).__name__}: {text[0] if text else ''}"[:500]) from e
  expected = integrity.read(location.checksums) if location.checksums else None
  if expected is not None:
    integrity.verify(params, expected["params"], paths.parent(params_dir), "parameter")
  if as_numpy:
    return config, params
  target_dtype = jnp.dtype(dtype or config.param_dtype)
  return config, jax.tree.map(lambda x: x if x.dtype == target_dtype else x.astype(target_dtype), params)


def tree_metadata(params_dir: str) -> Any:
  """The parameter tree of a params checkpoint, with ArrayMetadata (shape, dtype) leaves."""
  from etils import epath

  try:
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(params_dir))
  except Exception as e:  # noqa: BLE001 - unreadable or corrupt _METADATA / manifest
    text = str(e).strip().splitlines()
    raise CheckpointError(f"{params_dir}: its metadata cannot be read ({type(e).__name__}: "
                          f"{text[0] if text else ''}); the checkpoint is damaged"[:500]) from e
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
