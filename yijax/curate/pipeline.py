"""`yijax curate`: the cascade as datatrove executors, one per stage, run in Yi's order.

  DIR/plan.json                the units (one per task), the inputs and the resolved config
  DIR/work/<stage>/            each stage's surviving documents (<task>.jsonl) and dedup signatures
  DIR/removed/<stage>/         removed documents: <rule>.<task>.jsonl, each with its reason
  DIR/kept/<task>.jsonl        {"id", "text"} per kept document: `yijax prepare --source=NAME=DIR/kept`
  DIR/logs/<stage>/            datatrove logs, stats and completions/ (a finished task is never rerun)
  DIR/report.{json,md}, *.png  yijax/curate/report.py

Locally (datatrove LocalPipelineExecutor, `executor.workers` processes) the stages run one after another;
on Slurm (SlurmPipelineExecutor) each stage is a job array depending on the previous one, and a last
one-task job writes the report. A killed run rerun with the same command skips finished tasks.
"""

from __future__ import annotations

import json
import os

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter

from yijax.curate import inputs, rules, scorers
from yijax.data import manifest
from yijax.errors import ConfigError, DataError, MissingFileError

PLAN = "plan.json"


def removed_adapter(self, document: Document) -> dict:
  meta = dict(document.metadata)
  reason = meta.pop("filter_reason", None) or meta.pop("reason", None) or self.rule
  return {"id": document.id, "stage": self.stage, "rule": self.rule, "reason": reason, "text": document.text,
          "metadata": meta}


def kept_adapter(self, document: Document) -> dict:
  return {"id": document.id, "text": document.text}


class RemovedWriter(JsonlWriter):
  def __init__(self, out_dir: str, stage: str, rule: str):
    super().__init__(os.path.join(out_dir, "removed", stage), output_filename=f"{rule}.${{rank}}.jsonl",
                     compression=None, adapter=removed_adapter)
    self.stage, self.rule = stage, rule


def stage_writer(out_dir: str, stage: str) -> JsonlWriter:
  return JsonlWriter(os.path.join(out_dir, "work", stage), output_filename="${rank}.jsonl", compression=None)


class ShardReader(PipelineStep):
  """Reads the documents task `rank` of the previous stage wrote (none when it wrote none)."""

  name = "yijax stage reader"
  type = "📖 - READER"

  def __init__(self, folder: str):
    super().__init__()
    self.folder = folder

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    path = os.path.join(self.folder, f"{rank:05d}.jsonl")
    if not os.path.exists(path):
      return
    with open(path, encoding="utf-8") as f:
      for line in f:
        value = json.loads(line)
        self.stat_update("documents")
        yield Document(text=value["text"], id=value["id"], metadata=value.get("metadata", {}))


def check(config) -> None:
  """Config errors before any work, naming the field and the fix."""
  for field in ("heuristics.url_blocklist", "heuristics.word_blocklist", "langid.model"):
    section, name = field.split(".")
    path = config[section][name]
    if path and not os.path.isfile(path):
      raise MissingFileError(f"--config.{field}={path} does not exist; give the file or set it to ''")
  near = config.dedup.near
  if near.enabled and (near.bands < 1 or near.rows < 1 or not 0.0 < near.jaccard <= 1.0 or near.shingle_words < 1):
    raise ConfigError(f"dedup.near: bands={near.bands}, rows={near.rows} and shingle_words={near.shingle_words} must be "
                      f">= 1 and jaccard={near.jaccard} in (0, 1]")
  if config.executor.kind not in ("local", "slurm"):
    raise ConfigError(f"--config.executor.kind={config.executor.kind!r}: choose local or slurm")
  if config.executor.kind == "slurm" and not config.executor.slurm_partition:
    raise ConfigError("--config.executor.kind=slurm needs --config.executor.slurm_partition=NAME")
  if config.executor.workers < 1 or config.executor.dedup_tasks < 1:
    raise ConfigError("--config.executor.workers and --config.executor.dedup_tasks must be >= 1")


def settle_plan(out_dir: str, input_values: list[str], config) -> list[dict]:
  """The stored plan for the same inputs and config (a rerun resumes), else a new one; refuses a mix."""
  path = os.path.join(out_dir, PLAN)
  key = json.loads(json.dumps({"inputs": input_values, "config": config.to_dict()}, default=str))
  if os.path.exists(path):
    stored = manifest.read_json(path)
    if stored["key"] == key:
      return stored["units"]
    raise DataError(f"{out_dir} was curated from other inputs or another config; rerun with the original "
                    f"flags, or use a new --out")
  units = inputs.plan(input_values, config)
  manifest.write_json(path, {"key": key, "units": units})
  return units


def _filter_steps(config, out_dir: str, units: list[dict], specs: dict) -> list:
  writer = lambda stage: lambda rule: RemovedWriter(out_dir, stage, rule)
  steps = [inputs.UnitReader(units, config, RemovedWriter(out_dir, "input", "bad_input"),
                             os.path.join(out_dir, "work", "input_counts"))]
  steps += rules.heuristic_filters(config, writer("heuristics"))
  if config.langid.model:
    steps.append(rules.LanguageFilter(config.langid.model, config.langid.languages, config.langid.min_score,
                                      writer("langid")("language")))
  steps += [rules.ScoreFilter(name, spec, writer("learned")(name)) for name, spec in specs.items() if "skipped" not in spec]
  return steps + [stage_writer(out_dir, "filtered")]


def stages(config, out_dir: str, units: list[dict], specs: dict) -> list[tuple[str, list, int]]:
  """[(name, pipeline, tasks)] in order; each stage reads what the previous one wrote."""
  from datatrove.pipeline.dedup import (ExactDedupFilter, ExactDedupSignature, ExactFindDedups, MinhashDedupBuckets,
                                        MinhashDedupFilter, SentenceDedupFilter, SentenceDedupSignature,
                                        SentenceFindDedups)

  from yijax.curate import clusters, dedup, text as text_lib

  work = lambda name: os.path.join(out_dir, "work", name)
  tasks, finders = len(units), config.executor.dedup_tasks
  plan = [("filter", _filter_steps(config, out_dir, units, specs), tasks)]
  previous = work("filtered")
  if config.dedup.exact:
    cfg = dedup.exact_config()
    plan += [("exact_signatures", [ShardReader(previous), ExactDedupSignature(work("exact_sig"), cfg, finders)], tasks),
             ("exact_find", [ExactFindDedups(work("exact_sig"), work("exact_dups"), cfg)], finders),
             ("exact_filter", [ShardReader(previous), ExactDedupFilter(work("exact_dups"), cfg, RemovedWriter(
                 out_dir, "exact", "exact_duplicate")), stage_writer(out_dir, "exact")], tasks)]
    previous = work("exact")
  near = config.dedup.near
  if near.enabled:
    cfg = dedup.minhash_config(near)
    plan += [("near_signatures", [ShardReader(previous), dedup.VerifiedMinhashSignature(work("near_sig"), cfg)], tasks),
             ("near_buckets", [MinhashDedupBuckets(work("near_sig"), work("near_buckets"), config=cfg)], near.bands),
             ("near_clusters", [dedup.VerifiedMinhashCluster(work("near_sig"), work("near_buckets"),
                                                             work("near_clusters"), cfg, near.jaccard)], 1),
             ("near_filter", [ShardReader(previous), MinhashDedupFilter(work("near_clusters"), RemovedWriter(
                 out_dir, "near", "near_duplicate")), stage_writer(out_dir, "near")], tasks)]
    previous = work("near")
  if config.dedup.subdoc.enabled:
    cfg = dedup.subdoc_config(config.dedup.subdoc)
    tok = text_lib.TOKENIZER
    plan += [("subdoc_signatures", [ShardReader(previous), SentenceDedupSignature(work("subdoc_sig"), finders, cfg, tok)],
              tasks),
             ("subdoc_find", [SentenceFindDedups(work("subdoc_sig"), work("subdoc_dups"), config=cfg)], finders),
             ("subdoc_filter", [ShardReader(previous), SentenceDedupFilter(work("subdoc_dups"), cfg, RemovedWriter(
                 out_dir, "subdoc", "duplicate_spans"), tok), stage_writer(out_dir, "subdoc")], tasks)]
    previous = work("subdoc")
  kept = JsonlWriter(os.path.join(out_dir, "kept"), output_filename="${rank}.jsonl", compression=None,
                     adapter=kept_adapter)
  if config.clusters.enabled:
    plan.append(("clusters_fit", [clusters.ClusterFit(previous, work("clusters"), config.clusters, tasks)], 1))
    plan.append(("kept", [ShardReader(previous), clusters.ClusterFilter(work("clusters"), config.clusters.drop,
                                                                        RemovedWriter(out_dir, "clusters", "cluster")),
                          stage_writer(out_dir, "final"), kept], tasks))
  else:
    plan.append(("kept", [ShardReader(previous), stage_writer(out_dir, "final"), kept], tasks))
  return plan


def scorer_specs(config, units: list[dict], out_dir: str) -> dict:
  """The learned scorers' specs: trained once and stored in DIR/models/scorers.json, reused by a rerun."""
  import itertools

  path = os.path.join(out_dir, "models", "scorers.json")
  if os.path.exists(path):
    return manifest.read_json(path)
  reader = inputs.UnitReader(units, config, None, "")
  per_unit = max(config.learned.calibration_docs // len(units), 1)
  rules_before = rules.heuristic_filters(config, lambda rule: None)
  if config.langid.model:
    rules_before.append(rules.LanguageFilter(config.langid.model, config.langid.languages, config.langid.min_score))
  passes = lambda doc: all(step.filter(doc) is True for step in rules_before)
  # the calibration sample is what the scorers will see: input documents that pass the earlier stages
  sample = [itertools.islice(filter(passes, reader.documents(rank)), per_unit * 4) for rank in range(len(units))]
  specs = scorers.prepare(config, sample, out_dir)
  manifest.write_json(path, specs)
  return specs


class ReportStep(PipelineStep):
  """The last Slurm job: writes the report once every stage is done."""

  name = "yijax curate report"
  type = "📊 - STATS"

  def __init__(self, out_dir: str, config, specs: dict):
    super().__init__()
    self.out_dir, self.config, self.specs = out_dir, config, specs

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    from yijax.curate import report

    report.write(self.out_dir, self.config, self.specs)
    return iter(())


def run(input_values: list[str], out_dir: str, config) -> dict | None:
  """Runs (or resumes) the cascade; returns the report (None when submitted to Slurm)."""
  check(config)
  os.makedirs(out_dir, exist_ok=True)
  units = settle_plan(out_dir, input_values, config)
  specs = scorer_specs(config, units, out_dir)
  plan = stages(config, out_dir, units, specs)
  logs = lambda name: os.path.join(out_dir, "logs", name)
  if config.executor.kind == "slurm":
    from datatrove.executor import SlurmPipelineExecutor

    e = config.executor
    previous = None
    plan.append(("report", [ReportStep(out_dir, config, specs)], 1))
    for name, pipeline, tasks in plan:
      previous = SlurmPipelineExecutor(
          pipeline, tasks=tasks, time=e.slurm_time, partition=e.slurm_partition, cpus_per_task=e.slurm_cpus_per_task,
          mem_per_cpu_gb=e.slurm_mem_per_cpu_gb, job_name=f"curate_{name}", logging_dir=logs(name), depends=previous,
          env_command=e.slurm_env_command or None, slurm_logs_folder=os.path.join(out_dir, "logs", "slurm", name))
    previous.run()
    return None
  from datatrove.executor import LocalPipelineExecutor

  for name, pipeline, tasks in plan:
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(config.executor.workers, tasks), logging_dir=logs(name),
                          start_method=config.executor.start_method).run()
  from yijax.curate import report

  return report.write(out_dir, config, specs)
