"""Stage kinds of the study runner. Each is fn(name, stage, stage_dir, context) -> summary dict.

  train   stage.run: a full run config; trains (or resumes) in the stage dir
  python  stage.fn: "package.module:function" or "path/to/file.py:function",
          called as fn(stage.args, stage_dir, context) -> summary dict

stage_dir (and context.workdir) may be a gs:// URL: a python stage reads and writes
through yijax.paths, and builds what only local tools can write in
yijax.studies.common.local_stage_dir(stage_dir).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from typing import Any, Callable

from yijax.models.config import ConfigError
from yijax.errors import YijaxError


def resolve_function(ref: str) -> Callable:
  """"pkg.module:fn" or "file.py:fn" -> the function. A relative file path is looked up from the current
  directory, then from the yijax checkout (so "yijax/studies/<study>.py:fn" works from anywhere)."""
  target, _, fn_name = ref.partition(":")
  if not fn_name:
    raise ConfigError(f"function reference {ref!r} must look like 'package.module:function' or 'file.py:function'")
  if target.endswith(".py"):
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(target) and not os.path.isabs(target) and os.path.exists(os.path.join(checkout, target)):
      target = os.path.join(checkout, target)
    if not os.path.exists(target):
      raise ConfigError(f"function reference {ref!r}: {target} does not exist (relative paths are looked up from "
                        f"the current directory and from {checkout})")
    spec = importlib.util.spec_from_file_location(f"_yijax_stage_{abs(hash(target))}", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    module = importlib.import_module(target)
  if not hasattr(module, fn_name):
    raise ConfigError(f"function reference {ref!r}: {target} has no {fn_name}")
  return getattr(module, fn_name)


class StagePreempted(YijaxError, RuntimeError):
  """A train stage stopped on SIGTERM after saving: not finished, so never marked done."""


def train_stage(name, stage, stage_dir, context) -> dict:
  from yijax.eval import dense
  from yijax.train import loop

  result = loop.train(stage.run, stage_dir, evaluators=dense.evaluators_from_config(stage.run))
  if result.get("preempted"):  # SIGTERM: saved, not finished; the study stops and a rerun resumes the stage
    raise StagePreempted(f"stage {name!r} was preempted (SIGTERM) at step {result.get('step')} and saved; rerun "
                         "the same command to resume it")
  keep = ("step", "loss", "tokens_seen", "preempted")
  summary = {k: result[k] for k in keep if k in result}
  summary.update({k: v for k, v in result.items() if k.startswith("eval/")})
  return json.loads(json.dumps(summary, default=float))


def python_stage(name, stage, stage_dir, context) -> dict:
  fn = resolve_function(stage.fn)
  return fn(stage.get("args"), stage_dir, context) or {}


KINDS: dict[str, Callable] = {"train": train_stage, "python": python_stage}


def describe(name: str, stage, workdir: str) -> dict[str, Any]:
  """One line of a --dry_run plan: what the stage is and how big."""
  out: dict[str, Any] = {"stage": name, "kind": stage.kind, "depends_on": list(stage.get("depends_on", ()))}
  if stage.kind == "train":
    from yijax import configlib, models

    model = configlib.model_config(stage.run)
    counts = models.param_count(model)
    train = stage.run.train
    out.update({
        "seed": train.seed, "model_params": counts["total"], "active_params": counts["active"],
        "steps": train.steps, "batch_size": train.batch_size, "seq_len": train.seq_len,
        "tokens": train.steps * train.batch_size * train.seq_len,
        "init_from": stage.run.train.init_from or None, "mesh": dict(stage.run.mesh),
        "rope_theta": model.rope_theta, "lr": stage.run.optimizer.lr, "schedule": stage.run.optimizer.schedule,
        "length_upsampling": stage.run.data.length_upsampling.mode,
    })
  elif stage.kind in KINDS:
    out["fn"] = stage.get("fn")
    args = stage.get("args")
    if args is not None:
      out["args"] = args.to_dict() if hasattr(args, "to_dict") else args
  return out
