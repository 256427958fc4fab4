"""Run checkpoints: one orbax composite per step under WORKDIR/checkpoints/<step>/.

Items of a step:
  params/        the parameter pytree (also a loadable model: see params_io)
  opt_state/     optimizer state, step counter and PRNG key
  meta/          JSON: step, tokens_seen, nonfinite counts, wall time
  data/          the grain iterator state, one JSON file per process
  config/        JSON: the whole resolved run config
  model_config/  model_config.json
  checksums/     checksums.json: a checksum of every params and opt_state array (integrity.py),
                 verified after every restore, so corrupted weights are refused, naming the parameter

orbax writes each step into a temporary directory and renames it when every
item is committed (on GCS, which cannot rename, it writes the step in place and
marks it finished with commit_success.txt), so a process killed mid-save
leaves nothing that `latest_complete_step` would pick. WORKDIR may be a local
path or a gs:// URL (see paths.py).
Keep policy: the newest `keep_last` steps, every multiple of `keep_every`,
`keep_log_spaced` log-spaced steps (saved and kept: dense early checkpoints
for checkpoint-dynamics studies) and the listed `keep_steps` (saved and kept:
e.g. the growth points of a model-growth study).
"""

from __future__ import annotations

import logging
import json
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from yijax.models.config import ModelConfig
from yijax import paths
from yijax.train import integrity, params_io
from yijax.errors import CheckpointMismatchError
from yijax.train.params_io import MODEL_CONFIG, CheckpointError, complete_steps, latest_complete_step  # noqa: F401

log = logging.getLogger(__name__)

ITEMS = ("params", "opt_state", "meta", "data", "config", "model_config", "checksums")

# which config field sets the size of a dimension with this logical name
AXIS_FIELDS = {
    "vocab": "model.vocab_size", "embed": "model.hidden_size", "layers": "model.num_layers",
    "heads": "model.num_heads", "kv_heads": "model.num_kv_heads", "head_dim": "model.head_dim",
    "mlp": "model.mlp_dim", "expert": "model.num_experts",
}


class _FrozenIteratorState:
  """Holds a grain iterator state captured at save time (async saves run later)."""

  def __init__(self, state: Any):
    self._bytes = json.dumps(state).encode()

  def get_state(self) -> bytes:
    return self._bytes


class _StateHolder:
  """Receives a grain iterator state on restore (grain's handler calls set_state)."""

  state: Any = None

  def set_state(self, state):
    try:
      self.state = json.loads(state.decode() if isinstance(state, bytes) else state)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"the data-iterator state is not valid JSON ({e})") from None

  def start_prefetch(self):
    pass


def _handlers() -> dict:
  import grain

  return {
      "params": ocp.StandardCheckpointHandler(),
      "opt_state": ocp.StandardCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler(),
      "data": grain.checkpoint.CheckpointHandler(),
      "config": ocp.JsonCheckpointHandler(filename="config.json"),
      "model_config": ocp.JsonCheckpointHandler(filename=MODEL_CONFIG),
      "checksums": ocp.JsonCheckpointHandler(filename=integrity.FILE),
  }


def log_spaced_steps(total_steps: int, count: int) -> list[int]:
  """About `count` distinct steps spread evenly in log space over [1, total_steps]."""
  if count <= 0 or total_steps <= 0:
    return []
  import numpy as np

  return sorted({int(s) for s in np.round(np.geomspace(1, total_steps, count))})


class RunCheckpointer:
  """Saves and restores a run's composite checkpoints (cfg: the `checkpoint` section)."""

  def __init__(self, workdir: str, cfg, total_steps: int = 0):
    self.directory = paths.join(paths.resolve(workdir), "checkpoints")
    self.every = int(cfg.every_steps)
    self.extra_steps = set(log_spaced_steps(total_steps, int(cfg.get("keep_log_spaced", 0))))
    self.extra_steps |= {int(s) for s in cfg.get("keep_steps", ())}
    from orbax.checkpoint.checkpoint_managers import preservation_policy as keep

    policies = [keep.LatestN(max(int(cfg.keep_last), 1))]
    if int(cfg.keep_every):
      policies.append(keep.EveryNSteps(int(cfg.keep_every)))
    if self.extra_steps:
      policies.append(keep.CustomSteps(sorted(self.extra_steps)))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=keep.AnyPreservationPolicy(policies),
        enable_async_checkpointing=bool(cfg.async_save),
        create=True,
        cleanup_tmp_directories=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

  def due(self, step: int, last: int) -> bool:
    """Whether a checkpoint is written after `step` (the schedule plus the log-spaced and listed steps)."""
    return step % self.every == 0 or step == last or step in self.extra_steps

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params, opt_state, meta: dict, data_state: Any, config: dict,
           model_config: ModelConfig, force: bool = True) -> bool:
    import grain

    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta),
        data=grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_state)),
        config=ocp.args.JsonSave(config),
        model_config=ocp.args.JsonSave(model_config.to_dict()),
        checksums=ocp.args.JsonSave({"params": integrity.checksums(params),
                                     "opt_state": integrity.checksums(opt_state)}),
    )
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_params, abstract_opt_state, logical_specs=None):
    """(params, opt_state, meta, data_state) of `step`, placed as the abstract trees say, every array
    checked against the checksums saved with it. Raises CheckpointError naming the step and what is
    damaged (a file that cannot be read, JSON that does not parse, an array whose checksum differs)."""
    step_dir = paths.join(self.directory, str(step))
    check_json_files(step_dir)
    check_shapes(paths.join(step_dir, "params"), abstract_params, logical_specs)
    holder = _StateHolder()
    expected = integrity.read(paths.join(step_dir, "checksums", integrity.FILE))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params),
          opt_state=ocp.args.StandardRestore(abstract_opt_state),
          meta=ocp.args.JsonRestore(),
          data=_grain_restore(holder),
      ))
    except CheckpointMismatchError:
      raise
    except Exception as e:  # noqa: BLE001 - any failure to read a stored item means the step is damaged
      raise CheckpointError(f"checkpoint {step_dir} cannot be read: {_first_line(e)}") from e
    if expected is None:
      log.info(f"checkpoint {step_dir} has no checksums (written by an older yijax): not verified")
    else:
      integrity.verify(restored["params"], expected["params"], f"checkpoint {step_dir}", "params")
      integrity.verify(restored["opt_state"], expected["opt_state"], f"checkpoint {step_dir}", "opt_state")
    return restored["params"], restored["opt_state"], restored["meta"], holder.state

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def set_aside(self, step: int, reason: str) -> str:
    """Moves a damaged step out of checkpoints/ into WORKDIR/damaged_checkpoints/ (never deleted), so
    neither resume nor the keep policy touches it again; returns where it went."""
    import time

    source = paths.join(self.directory, str(step))
    target_root = paths.join(paths.parent(self.directory), "damaged_checkpoints")
    target = paths.join(target_root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      paths.makedirs(target_root)
      paths.rename(source, target)
      paths.write_text(paths.join(target, "DAMAGED.txt"), reason + "\n")
    from yijax import sharding

    sharding.barrier("yijax_set_aside_checkpoint")
    self.manager.reload()
    return target

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# the JSON files of a step, checked before orbax reads them so a damaged one is named
JSON_FILES = ("meta/metadata", "params/_METADATA", "opt_state/_METADATA", "config/config.json",
              f"model_config/{MODEL_CONFIG}", "_CHECKPOINT_METADATA")


def check_json_files(step_dir: str) -> None:
  """Raises CheckpointError naming the first JSON file of a checkpoint step that does not parse."""
  names = list(JSON_FILES)
  data_dir = paths.join(step_dir, "data")
  if paths.isdir(data_dir):
    names += [f"data/{p.name}" for p in paths.path(data_dir).iterdir() if p.name.endswith(".json")]
  for name in names:
    file = paths.join(step_dir, *name.split("/"))
    if not paths.exists(file):
      continue
    try:
      json.loads(paths.read_text(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{file} is not valid JSON ({e}); the checkpoint is damaged") from None


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:400]


def _grain_restore(holder: _StateHolder):
  import grain

  return grain.checkpoint.CheckpointRestore(holder)


def read_data_state(path: str, process_index: int = 0, process_count: int = 1) -> Any:
  """The data-iterator state saved with a checkpoint (a run dir's latest, a step dir, or a
  `yijax surgery` output made from one), for this process: what `train.init_data_state_from` reads."""
  location = params_io.locate_model(path)
  state_file = paths.join(paths.parent(location.params_dir), "data",
                          f"process_{process_index}-of-{process_count}.json")
  if not paths.exists(state_file):
    raise CheckpointError(
        f"{path} holds no data-iterator state for process {process_index} of {process_count} (expected "
        f"{state_file}); train.init_data_state_from needs a run dir or checkpoint step dir written by the "
        "same number of processes, or a `yijax surgery` output made from one")
  try:
    return json.loads(paths.read_text(state_file))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{state_file} is not valid JSON ({e}); the checkpoint is damaged") from None


def _flat(tree, is_leaf=None) -> dict[str, Any]:
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}


def check_shapes(params_dir: str, abstract_params, logical_specs=None) -> None:
  """Raises CheckpointError naming the parameter, both shapes and the config field."""
  stored = _flat(params_io.tree_metadata(params_dir), is_leaf=lambda m: hasattr(m, "shape"))
  wanted = _flat(abstract_params)
  specs = _flat(logical_specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)) if logical_specs else {}
  missing = sorted(set(wanted) - set(stored))
  extra = sorted(set(stored) - set(wanted))
  if missing or extra:
    raise CheckpointMismatchError(
        f"checkpoint {params_dir} does not match the model: missing {missing[:4]}, unexpected {extra[:4]} "
        "(was it written with another model config?)"
    )
  for name, leaf in wanted.items():
    have = tuple(stored[name].shape)
    if have != tuple(leaf.shape):
      names = tuple(specs.get(name, ()))
      fields = sorted({AXIS_FIELDS.get(n, "?") for n, a, b in zip(names, have, leaf.shape) if a != b and n})
      raise CheckpointMismatchError(
          f"checkpoint parameter {name} has shape {have} but the config gives {tuple(leaf.shape)}"
          + (f"; check {', '.join(fields)}" if fields else "")
      )


def logical_param_specs(boxed_abstract_params):
  return nn.get_partition_spec(boxed_abstract_params)
