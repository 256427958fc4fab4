"""What every study config shares: the scale dispatch and the `study` section of knobs.

A study config is

  name     the study ("moe")
  scale    smoke | cpu | gpu | paper
  study    the knobs a researcher steers (seeds, token budgets, sizes, learning rates), each a
           FieldReference that the stages read, so `--config.study.steps=600` changes every stage
           that depends on it
  stages   the runner's stages (yijax/studies/runner.py)

    knobs = common.by_scale(scale, smoke={...}, cpu={...}, gpu={...}, paper={...})
    config = common.new_study("moe", scale, knobs)
    run.train.steps = config.study.get_ref("steps")

and `local_stage_dir`, where a python stage builds what only local tools can write (a tokenizer, prepared
data) when its stage dir is a gs:// URL.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import ml_collections

from yijax import paths
from yijax.models.config import ConfigError

SCALES = ("smoke", "cpu", "gpu", "paper")
# the least number of paired seeds a scale runs when its README compares arms
MIN_SEEDS = {"smoke": 1, "cpu": 3, "gpu": 2, "paper": 1}


def by_scale(scale: str, **per_scale: Any) -> Any:
  """The value for `scale` among smoke=..., cpu=..., gpu=..., paper=...; a clear error for any other."""
  if scale not in per_scale:
    known = [s for s in SCALES if s in per_scale] + sorted(set(per_scale) - set(SCALES))
    raise ConfigError(f"scale {scale!r} is not one of {known}; pick one as config.py:<scale>")
  return per_scale[scale]


def new_study(name: str, scale: str, knobs: dict[str, Any]) -> ml_collections.ConfigDict:
  """A study config with its knobs as FieldReferences under `study` and an empty `stages`."""
  if "seeds" not in knobs:
    raise ConfigError(f"study {name!r}: the knobs need `seeds` (paired seeds per arm)")
  config = ml_collections.ConfigDict()
  config.name = name
  config.scale = scale
  config.study = ml_collections.ConfigDict({key: ml_collections.FieldReference(value)
                                            for key, value in knobs.items()})
  config.stages = ml_collections.ConfigDict()
  return config


def link(run: ml_collections.ConfigDict, fields: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields of a run config to values or FieldReferences ({"train.steps": study.get_ref("steps")})."""
  for dotted, value in fields.items():
    node = run
    *parents, leaf = dotted.split(".")
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise ConfigError(f"{dotted} is not a field of the run config")
    with node.unlocked():
      node[leaf] = value
  return run


@contextlib.contextmanager
def local_stage_dir(stage_dir: str, replace: bool = False):
  """A local directory standing in for `stage_dir` (paths.local_dir): the stage dir itself when local; for a
  gs:// stage dir a temporary one, copied up when the block ends without an error (replace: over what was
  there, removed first; else beside it: the stage's log is there). A prepared-data manifest
  built there names its tokenizer and inputs by local path: those inside the staging directory are renamed
  to their uploaded locations, so runs that read the prepared data find its tokenizer."""
  with paths.local_dir(stage_dir, replace) as local:
    yield local
    if local != stage_dir:
      _rebase_manifests(local, stage_dir)


def _rebase_manifests(local: str, url: str) -> None:
  from yijax.data import manifest as manifest_lib

  def rebase(value):
    if isinstance(value, str) and value.startswith(local + os.sep):
      return paths.join(url, *os.path.relpath(value, local).split(os.sep))
    if isinstance(value, dict):
      return {k: rebase(v) for k, v in value.items()}
    if isinstance(value, list):
      return [rebase(v) for v in value]
    return value

  for root, _, files in os.walk(local):
    if manifest_lib.MANIFEST in files:
      manifest_lib.write(root, rebase(json.loads(paths.read_text(os.path.join(root, manifest_lib.MANIFEST)))))
