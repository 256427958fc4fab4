"""The study runner: one config, a graph of stages, one resumable command.

  yijax experiment --config=experiments/<study>/config.py:<scale> --workdir=DIR [--config.x=v] [--dry_run]

A study config holds `stages`, an ordered ConfigDict of stages. Each stage is
`kind` (see yijax/studies/stages.py: train, python, ...), `depends_on` (names
of earlier stages) and the fields its kind reads. String fields may name
other stages' directories: "{workdir}" and "{stage:NAME}" are substituted
before the stage runs.

Seeds are an axis of every study: `study.seeds` (an int, the config's `study`
section; `--config.study.seeds=5`) expands each stage marked `seeded=True`
into one instance per seed, NAME/seed<i>, run in DIR/NAME/seed<i>/. Seeds are
paired: instance i of every seeded train stage gets `train.seed` + i (the
model init and the data order), a python stage sees `context.seed`, "{seed}"
is substituted, and "{stage:NAME}" or a dependency on a seeded NAME from
inside seed i means NAME's seed i. A stage that is not seeded and depends on
a seeded one waits for all its seeds and reads them with
`context.stage_dirs(NAME)`.

Every stage runs in DIR/<stage>/ (an ordinary yijax run dir for train stages)
and, when it finishes, writes DIR/<stage>/DONE.json with its summary and the
hash of its config. A rerun skips finished stages (refusing if their config
changed), resumes a partial one (train stages resume from their checkpoints)
and runs the rest. A failing stage stops the study, naming the stage and its
log (DIR/<stage>/log.txt); nothing finished is redone or lost.

DIR may be a gs://BUCKET/PATH URL. The runner's files go through
yijax/paths.py, train stages write gs:// run dirs as `yijax train` does, and
python stages read and write through paths too (what a tool can only write
into a local directory is staged there and copied up: paths.local_dir). GCS
has no append, so a stage's log is kept in a local file while the stage runs
and uploaded whole when it ends or fails; a resumed stage's log continues the
uploaded one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any

import ml_collections

from yijax import paths
from yijax.models.config import ConfigError
from yijax.errors import YijaxError

log = logging.getLogger(__name__)

DONE = "DONE.json"
LOG = "log.txt"
RUN = "run.json"
# what `publish` copies into experiments/<study>/results/<scale>/ (small files; never checkpoints)
PUBLISHED = ("results.json", "report.md", RUN)


class StageFailed(YijaxError, RuntimeError):
  """A stage raised; the message names the stage and its log."""


@dataclasses.dataclass
class Context:
  """What a stage can see: the study dir, the study config, finished stages' summaries and, inside a
  seeded stage, its seed."""

  workdir: str
  study: ml_collections.ConfigDict
  summaries: dict[str, dict]
  seed: int | None = None

  def stage_dir(self, name: str) -> str:
    """The directory of stage `name` (a seeded stage from inside a seeded one: the same seed's)."""
    if self.seed is not None and _is_seeded(self.study, name):
      name = instance_name(name, self.seed)
    return paths.join(self.workdir, name)

  @property
  def seeds(self) -> list[int]:
    return list(range(num_seeds(self.study)))

  def _instances(self, name: str) -> list[str]:
    if not _is_seeded(self.study, name):
      return [name]
    return [instance_name(name, seed) for seed in self.seeds]

  def stage_dirs(self, name: str) -> list[str]:
    """Every seed's directory of a seeded stage, in seed order ([its one directory] if not seeded)."""
    return [paths.join(self.workdir, instance) for instance in self._instances(name)]

  def seed_summaries(self, name: str) -> list[dict]:
    return [self.summaries[instance] for instance in self._instances(name)]


@dataclasses.dataclass
class Instance:
  """One runnable stage: a stage of the config, or one seed of a seeded stage."""

  name: str            # "report", or "dense/seed1"
  base: str            # the stage's name in the config
  seed: int | None
  depends_on: list[str]


def _plain(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return value


def num_seeds(study: ml_collections.ConfigDict) -> int:
  section = study.get("study", None)
  if section is not None and not isinstance(section, (ml_collections.ConfigDict, dict)):
    raise ConfigError(f"config.study={section!r} must be the study's section of knobs (seeds, budgets, ...); "
                      "name the study in config.name")
  seeds = section.get("seeds", 1) if section is not None else 1
  if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
    raise ConfigError(f"study.seeds={seeds!r} must be a positive integer (the number of paired seeds per arm)")
  return seeds


def _is_seeded(study: ml_collections.ConfigDict, name: str) -> bool:
  return name in study.stages and bool(study.stages[name].get("seeded", False))


def instance_name(name: str, seed: int) -> str:
  return f"{name}/seed{seed}"


def stage_hash(stage: Any) -> str:
  """The hash of a stage's config as written (placeholders unresolved, so a moved study dir still matches)."""
  text = json.dumps(_plain(stage), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def substitute(value: Any, workdir: str, seed: int | None = None, seeded: frozenset = frozenset()) -> Any:
  """Replaces {workdir}, {seed} and {stage:NAME} in every string of a (nested) value. Inside seed i a
  seeded NAME means NAME/seed<i>; outside any seed a seeded NAME is an error (use context.stage_dirs)."""
  if isinstance(value, str):
    out = value.replace("{workdir}", workdir)
    if seed is not None:
      out = out.replace("{seed}", str(seed))
    while "{stage:" in out:
      start = out.index("{stage:")
      end = out.index("}", start)
      name = out[start + 7:end]
      if name in seeded:
        if seed is None:
          raise ConfigError(f"{value!r} names the seeded stage {name!r} from a stage that is not seeded; mark it "
                            f"seeded=True or read every seed with context.stage_dirs({name!r})")
        name = instance_name(name, seed)
      out = out[:start] + paths.join(workdir, name) + out[end + 1:]
    return out
  if isinstance(value, ml_collections.ConfigDict):
    for key in list(value.keys()):
      with value.unlocked():
        value[key] = substitute(value[key], workdir, seed, seeded)
    return value
  if isinstance(value, (list, tuple)):
    return type(value)(substitute(v, workdir, seed, seeded) for v in value)
  if isinstance(value, dict):
    return {k: substitute(v, workdir, seed, seeded) for k, v in value.items()}
  return value


def expand(study: ml_collections.ConfigDict) -> dict[str, Instance]:
  """The stages as runnable instances, seeded stages once per seed, with their dependencies resolved."""
  if "stages" not in study or not study.stages:
    raise ConfigError("a study config needs `stages` (a ConfigDict of stages)")
  from yijax.studies import stages as stage_kinds

  seeds = range(num_seeds(study))
  if len(seeds) > 1 and not any(stage.get("seeded", False) for stage in study.stages.values()):
    raise ConfigError(f"study.seeds={len(seeds)}, but no stage of {study.get('name', 'this study')!r} is seeded "
                      "(seeded=True): it runs one seed; set study.seeds=1")
  instances: dict[str, Instance] = {}
  for name, stage in study.stages.items():
    if "kind" not in stage or stage.kind not in stage_kinds.KINDS:
      raise ConfigError(f"stages.{name}.kind={stage.get('kind')!r} is not one of {sorted(stage_kinds.KINDS)}")
    deps = list(stage.get("depends_on", ()))
    unknown = [d for d in deps if d not in study.stages]
    if unknown:
      raise ConfigError(f"stages.{name}.depends_on names {unknown}, which are not stages ({sorted(study.stages)})")
    for seed in (seeds if stage.get("seeded", False) else [None]):
      resolved = []
      for dep in deps:
        if not _is_seeded(study, dep):
          resolved.append(dep)
        elif seed is not None:
          resolved.append(instance_name(dep, seed))
        else:
          resolved.extend(instance_name(dep, s) for s in seeds)
      instance = Instance(name if seed is None else instance_name(name, seed), name, seed, resolved)
      instances[instance.name] = instance
  return instances


def check_graph(study: ml_collections.ConfigDict) -> list[str]:
  """Runnable stage names in a dependency order: ties go seed by seed (every arm's seed 0 before any
  seed 1, so a study cut short holds complete pairs), then by name; no cycles."""
  instances = expand(study)
  order: list[str] = []
  done: set[str] = set()
  while len(order) < len(instances):
    ready = [n for n, i in instances.items() if n not in done and all(d in done for d in i.depends_on)]
    if not ready:
      raise ConfigError(f"stages {sorted({instances[n].base for n in instances if n not in done})} depend on "
                        "each other in a cycle")
    first = min(ready, key=lambda n: (-1 if instances[n].seed is None else instances[n].seed, n))
    order.append(first)
    done.add(first)
  return order


def resolve_instance(study: ml_collections.ConfigDict, instance: Instance, workdir: str) -> ml_collections.ConfigDict:
  """The instance's stage config as it runs: placeholders substituted, train.seed offset by its seed."""
  stage = ml_collections.ConfigDict(_plain(study.stages[instance.base]))
  seeded = frozenset(n for n in study.stages if _is_seeded(study, n))
  stage = substitute(stage, workdir, instance.seed, seeded)
  if instance.seed is not None and stage.kind == "train":
    stage.run.train.seed = int(stage.run.train.seed) + instance.seed
  return stage


@contextlib.contextmanager
def _logged(location: str):
  """Appends what yijax logs during a stage (its `logging.getLogger("yijax...")` messages, the loop's
  included) to the stage's log file, through a handler on the yijax logger: nothing process-wide swapped.
  A gs:// log is written to a local copy of the uploaded one and uploaded whole when the stage ends."""
  remote = paths.is_url(location)
  staging = tempfile.mkdtemp(prefix="yijax-stage-log-") if remote else None
  local = os.path.join(staging, LOG) if remote else location
  if remote and paths.exists(location):
    paths.copy_file(location, local)
  handler = logging.FileHandler(local, mode="a", encoding="utf-8")
  handler.setFormatter(logging.Formatter("%(message)s"))
  with open(local, "a") as f:
    f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
  library = logging.getLogger("yijax")
  library.addHandler(handler)
  try:
    yield handler
  finally:
    library.removeHandler(handler)
    handler.close()
    if remote:
      _upload_log(local, location, staging)


def _upload_log(local: str, location: str, staging: str) -> None:
  """The staged log to its gs:// location; if that fails, the local copy is kept and named (a failed
  upload must not hide the stage's own result or error)."""
  try:
    paths.copy_file(local, location)
  except Exception as e:  # noqa: BLE001 - reported, the stage's outcome stands
    log.warning(f"[study] could not upload the stage log to {location} ({type(e).__name__}: {e}); "
                f"it is kept at {local}")
    return
  shutil.rmtree(staging, ignore_errors=True)


def _write_json(location: str, value: Any) -> None:
  paths.write_text(location, json.dumps(value, indent=2, sort_keys=True, default=str))


def run_study(study: ml_collections.ConfigDict, workdir: str, dry_run: bool = False) -> dict:
  """Runs every unfinished stage in order; returns {"ran": [...], "skipped": [...], "summaries"}."""
  from yijax.studies import stages as stage_kinds

  names = check_graph(study)
  instances = expand(study)
  workdir = paths.resolve(workdir)
  if dry_run:
    plan = []
    for name in names:
      line = stage_kinds.describe(name, resolve_instance(study, instances[name], workdir), workdir)
      plan.append({**line, "depends_on": instances[name].depends_on})
    return {"plan": plan}
  paths.makedirs(workdir)
  _write_json(paths.join(workdir, "study_config.json"), _plain(study))
  summaries: dict[str, dict] = {}
  ran, skipped = [], []
  code = code_version()
  for name in names:
    instance = instances[name]
    stage = resolve_instance(study, instance, workdir)
    context = Context(workdir, study, summaries, instance.seed)
    stage_dir = paths.join(workdir, name)
    done_path = paths.join(stage_dir, DONE)
    raw = study.stages[instance.base]
    digest = stage_hash(raw if instance.seed is None else {"stage": _plain(raw), "seed": instance.seed})
    if paths.exists(done_path):
      done = paths.read_json(done_path, f"stage {name!r}'s")
      if done.get("hash") != digest:
        raise ConfigError(
            f"stage {name!r} finished earlier with another config (hash {done.get('hash')} != {digest}); "
            f"rerun with a new --workdir, or delete {stage_dir} to redo it")
      if done.get("inputs", instance.depends_on) == instance.depends_on:
        summaries[name] = done["summary"]
        skipped.append(name)
        log.info(f"[study] {name}: done earlier, skipped")
        continue
      log.info(f"[study] {name}: its inputs changed ({done.get('inputs')} -> {instance.depends_on}), rerun")
    paths.makedirs(stage_dir)
    started = time.time()
    log_path = paths.join(stage_dir, LOG)
    log.info(f"[study] {name} ({stage.kind}) -> {stage_dir}")
    with _logged(log_path):
      try:
        summary = stage_kinds.KINDS[stage.kind](name, stage, stage_dir, context) or {}
      except BaseException as e:  # noqa: BLE001 - reported with the stage's name, then re-raised
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
          raise
        log.error(f"stage {name!r} failed:\n{traceback.format_exc()}")
        raise StageFailed(f"stage {name!r} failed: {type(e).__name__}: {e}\n  log: {log_path}") from e
    _write_json(done_path, {"hash": digest, "inputs": instance.depends_on, "summary": summary,
                            "finished": time.time(), "seconds": time.time() - started, **code})
    summaries[name] = summary
    ran.append(name)
  log.info(f"[study] ran {ran or 'nothing'}; skipped (done earlier) {skipped or 'nothing'}")
  _write_json(paths.join(workdir, RUN), run_record(workdir, names))
  return {"ran": ran, "skipped": skipped, "summaries": summaries}


def _git(*args: str) -> str:
  import subprocess

  checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    return subprocess.run(["git", "-C", checkout, *args], capture_output=True, text=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""


def code_version() -> dict:
  """The commit of the yijax checkout and whether its library or study configs differ from it (read when a
  study starts, so edits made while it runs are not attributed to it)."""
  dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "yijax", "experiments/*/config.py"))
  return {"commit": _git("rev-parse", "HEAD") or "unknown", "code_modified_since_commit": dirty}


def run_record(workdir: str, names: list[str]) -> dict:
  """run.json: the command, the code's commit(s), the date, the machine and the wall time of every stage."""
  import platform

  import jax

  seconds, commits, dirty = {}, set(), False
  for name in names:
    done = paths.read_json(paths.join(workdir, name, DONE), f"stage {name!r}'s")
    seconds[name] = round(float(done.get("seconds", 0.0)), 1)
    commits.add(done.get("commit", "unknown"))
    dirty = dirty or bool(done.get("code_modified_since_commit", True))
  return {
      "command": " ".join(["yijax"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith(("yijax", "cli.py"))
                 else " ".join(sys.argv),
      "commit": sorted(commits)[0] if len(commits) == 1 else sorted(commits), "code_modified_since_commit": dirty,
      "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
      "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                  "cpu_count": os.cpu_count(), "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
      "wall_seconds_total": round(sum(seconds.values()), 1), "wall_seconds_by_stage": seconds,
  }


def publish(workdir: str, results_dir: str) -> list[str]:
  """Copies a finished study's results.json, report.md, run.json and PNGs into results_dir (for example
  experiments/<study>/results/<scale>/, which is committed). Either may be a gs:// URL. Returns the files
  copied."""
  workdir, results_dir = paths.resolve(workdir), paths.resolve(results_dir, "--results_dir")
  missing = [f for f in PUBLISHED if not paths.exists(paths.join(workdir, f))]
  if missing:
    raise ConfigError(f"{workdir} has no {missing}: only a finished study (its report stage done) can be published")
  paths.check_output_dir(results_dir, "--results_dir")
  paths.makedirs(results_dir)
  for old in paths.listdir(results_dir):
    if old.endswith(".png"):
      paths.remove(paths.join(results_dir, old))
  names = list(PUBLISHED) + [n for n in paths.listdir(workdir) if n.endswith(".png")]
  for name in names:
    paths.copy_file(paths.join(workdir, name), paths.join(results_dir, name))
  return names
