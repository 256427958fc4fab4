"""The study runner: one config, a graph of stages, one resumable command.

  yijax experiment --config=experiments/<study>/config.py:<scale> --workdir=DIR [--config.x=v] [--dry_run]

A study config holds `stages`, an ordered ConfigDict of stages. Each stage is
`kind` (see yijax/studies/stages.py: train, python, ...), `depends_on` (names
of earlier stages) and the fields its kind reads. String fields may name
other stages' directories: "{workdir}" and "{stage:NAME}" are substituted
before the stage runs.

Every stage runs in DIR/<stage>/ (an ordinary yijax run dir for train stages)
and, when it finishes, writes DIR/<stage>/DONE.json with its summary and the
hash of its config. A rerun skips finished stages (refusing if their config
changed), resumes a partial one (train stages resume from their checkpoints)
and runs the rest. A failing stage stops the study, naming the stage and its
log (DIR/<stage>/log.txt); nothing finished is redone or lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
import traceback
from typing import Any

import ml_collections

from yijax.models.config import ConfigError

DONE = "DONE.json"
LOG = "log.txt"


class StageFailed(RuntimeError):
  """A stage raised; the message names the stage and its log."""


@dataclasses.dataclass
class Context:
  """What a stage can see: the study dir, stage dirs and finished stages' summaries."""

  workdir: str
  study: ml_collections.ConfigDict
  summaries: dict[str, dict]

  def stage_dir(self, name: str) -> str:
    return os.path.join(self.workdir, name)


def _plain(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return value


def stage_hash(stage: ml_collections.ConfigDict) -> str:
  text = json.dumps(_plain(stage), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def substitute(value: Any, workdir: str) -> Any:
  """Replaces {workdir} and {stage:NAME} in every string of a (nested) value."""
  if isinstance(value, str):
    out = value.replace("{workdir}", workdir)
    while "{stage:" in out:
      start = out.index("{stage:")
      end = out.index("}", start)
      out = out[:start] + os.path.join(workdir, out[start + 7:end]) + out[end + 1:]
    return out
  if isinstance(value, ml_collections.ConfigDict):
    for key in list(value.keys()):
      with value.unlocked():
        value[key] = substitute(value[key], workdir)
    return value
  if isinstance(value, (list, tuple)):
    return type(value)(substitute(v, workdir) for v in value)
  if isinstance(value, dict):
    return {k: substitute(v, workdir) for k, v in value.items()}
  return value


def check_graph(study: ml_collections.ConfigDict) -> list[str]:
  """Stage names in a dependency order (ConfigDicts sort their keys, so order comes from
  `depends_on`, ties by name); every dependency must name a stage, and no cycles."""
  if "stages" not in study or not study.stages:
    raise ConfigError("a study config needs `stages` (a ConfigDict of stages)")
  from yijax.studies import stages as stage_kinds

  deps = {}
  for name, stage in study.stages.items():
    if "kind" not in stage or stage.kind not in stage_kinds.KINDS:
      raise ConfigError(f"stages.{name}.kind={stage.get('kind')!r} is not one of {sorted(stage_kinds.KINDS)}")
    deps[name] = list(stage.get("depends_on", ()))
    unknown = [d for d in deps[name] if d not in study.stages]
    if unknown:
      raise ConfigError(f"stages.{name}.depends_on names {unknown}, which are not stages ({sorted(study.stages)})")
  order: list[str] = []
  while len(order) < len(deps):
    ready = sorted(n for n in deps if n not in order and all(d in order for d in deps[n]))
    if not ready:
      raise ConfigError(f"stages {sorted(set(deps) - set(order))} depend on each other in a cycle")
    order.append(ready[0])
  return order


class _Tee:
  def __init__(self, *streams):
    self.streams = streams

  def write(self, text):
    for s in self.streams:
      s.write(text)
    return len(text)

  def flush(self):
    for s in self.streams:
      s.flush()

  def isatty(self):
    return False


@contextlib.contextmanager
def _logged(path: str):
  with open(path, "a") as log:
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
    try:
      yield log
    finally:
      sys.stdout, sys.stderr = out, err


def _write_json(path: str, value: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def run_study(study: ml_collections.ConfigDict, workdir: str, dry_run: bool = False) -> dict:
  """Runs every unfinished stage in order; returns {"ran": [...], "skipped": [...], "summaries"}."""
  from yijax.studies import stages as stage_kinds

  names = check_graph(study)
  workdir = os.path.abspath(workdir)
  if dry_run:
    return {"plan": [stage_kinds.describe(name, substitute(ml_collections.ConfigDict(_plain(study.stages[name])),
                                                            workdir), workdir) for name in names]}
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, "study_config.json"), _plain(study))
  context = Context(workdir, study, {})
  ran, skipped = [], []
  for name in names:
    stage = study.stages[name]
    stage_dir = context.stage_dir(name)
    done_path = os.path.join(stage_dir, DONE)
    digest = stage_hash(stage)
    if os.path.exists(done_path):
      done = json.load(open(done_path))
      if done.get("hash") != digest:
        raise ConfigError(
            f"stage {name!r} finished earlier with another config (hash {done.get('hash')} != {digest}); "
            f"rerun with a new --workdir, or delete {stage_dir} to redo it")
      context.summaries[name] = done["summary"]
      skipped.append(name)
      print(f"[study] {name}: done earlier, skipped", flush=True)
      continue
    os.makedirs(stage_dir, exist_ok=True)
    log_path = os.path.join(stage_dir, LOG)
    print(f"[study] {name} ({stage.kind}) -> {stage_dir}", flush=True)
    resolved = substitute(ml_collections.ConfigDict(_plain(stage)), workdir)
    with _logged(log_path):
      try:
        summary = stage_kinds.KINDS[stage.kind](name, resolved, stage_dir, context) or {}
      except BaseException as e:  # noqa: BLE001 - reported with the stage's name, then re-raised
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
          raise
        traceback.print_exc()
        raise StageFailed(f"stage {name!r} failed: {type(e).__name__}: {e}\n  log: {log_path}") from e
    _write_json(done_path, {"hash": digest, "summary": summary, "finished": time.time()})
    context.summaries[name] = summary
    ran.append(name)
  print(f"[study] ran {ran or 'nothing'}; skipped (done earlier) {skipped or 'nothing'}", flush=True)
  return {"ran": ran, "skipped": skipped, "summaries": context.summaries}
