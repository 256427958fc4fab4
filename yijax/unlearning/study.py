"""Stages of the unlearning study (experiments/unlearning): its data and its evaluation.

  prepare_data  the document sets (splits.py) -> JSONL -> a tokenizer (unless given) ->
                STAGE/prepared (one prepared source per set), with the chunk count of each set
  evaluate      every model (original, retrain, each unlearning run) on the evaluation
                sets + Min-K% membership inference; one JSON per model under STAGE/models/,
                so a killed evaluation resumes where it stopped

Both are `python` stages: fn(args, stage_dir, context) -> summary.
"""

from __future__ import annotations

import logging
import json
import os

import numpy as np

from yijax import paths
from yijax.data import chunked
from yijax.errors import DataError, MissingFileError
from yijax.unlearning import report, splits
from yijax.unlearning.report import MODELS

log = logging.getLogger(__name__)

PREPARED = "prepared"
TASKS = "tasks"


def _tokenizer(args, stage_dir: str, train_texts: list[str]) -> str:
  """args.tokenizer, or a BPE tokenizer trained on the given JSONL files (the text the original model reads)
  into `stage_dir` (local)."""
  from yijax.data.tokenizer import MODEL_FILE, Tokenizer, train_tokenizer

  if args.get("tokenizer"):
    return Tokenizer(args.tokenizer).path
  out = os.path.join(stage_dir, "tokenizer")
  if not os.path.exists(os.path.join(out, MODEL_FILE)):
    sample = os.path.join(stage_dir, "tokenizer_sample.txt")
    with open(sample, "w", encoding="utf-8") as f:
      for path in train_texts:
        with open(path, encoding="utf-8") as docs:
          for line in docs:
            f.write(json.loads(line)["text"] + "\n")
    train_tokenizer([sample], int(args.vocab_size), out)
    os.remove(sample)
  return Tokenizer(out).path


def prepare_data(args, stage_dir: str, context) -> dict:
  """args: kind ("embedded": budgets, code_doc_bytes, prose_doc_bytes | "entities": the people and prose of
  yijax/unlearning/entities.py, QA task files under STAGE/tasks/ | "paths": paths {set: JSONL}),
  tokenizer ("" = train one of vocab_size on the text the original model reads), chunk_len, add_bos, add_eos,
  required_chunks {set: chunks that must exist}. Built in a local directory and copied up when the stage
  dir is a gs:// URL."""
  from yijax.studies import common

  with common.local_stage_dir(stage_dir) as local:
    summary = _prepare_data(args, local)
  summary["prepared"] = paths.join(stage_dir, PREPARED)
  if summary["tokenizer"].startswith(local + os.sep):
    summary["tokenizer"] = paths.join(stage_dir, *os.path.relpath(summary["tokenizer"], local).split(os.sep))
  log.info(json.dumps(summary["sets"], indent=1))
  return summary


def _prepare_data(args, stage_dir: str) -> dict:
  from yijax.data import pipeline, prepare

  text_dir = os.path.join(stage_dir, "text")
  tasks = {}
  if args.kind == "embedded":
    sets = splits.embedded_sets(dict(args.budgets), tuple(args.code_doc_bytes), tuple(args.prose_doc_bytes))
    set_files = splits.write_jsonl(sets, text_dir)
    tokenizer_text = [set_files["pretrain"]]
  elif args.kind == "entities":
    from yijax.unlearning import entities

    sets, tasks = entities.document_sets(args)
    set_files = splits.write_jsonl(sets, text_dir)
    tokenizer_text = [set_files[n] for n in ("prose", "world_a_bios", "world_a_qa", "forget", "retain")]
    paths.makedirs(os.path.join(stage_dir, TASKS))
    for name, items in tasks.items():
      paths.write_text(os.path.join(stage_dir, TASKS, f"{name}.jsonl"),
                       "".join(json.dumps(item) + "\n" for item in items))
  elif args.kind == "paths":
    set_files = dict(args.paths)
    missing = [name for name, path in set_files.items() if not os.path.isfile(path)]
    if missing:
      raise MissingFileError(f"unlearning sets {missing} not found at {[set_files[m] for m in missing]}; set "
                              "stages.data.args.paths.<set> to JSONL files with a `text` field")
    tokenizer_text = []
  else:
    raise DataError(f"stages.data.args.kind={args.kind!r}: choose 'embedded', 'entities' or 'paths'")
  if not tokenizer_text and not args.get("tokenizer"):
    raise DataError("stages.data.args.tokenizer is required with kind='paths' (the model's tokenizer.model)")
  tokenizer = _tokenizer(args, stage_dir, tokenizer_text)
  specs = [prepare.SourceSpec(name, "train", (path,), "text", "jsonl") for name, path in sorted(set_files.items())]
  out = os.path.join(stage_dir, PREPARED)
  manifest = prepare.prepare(specs, tokenizer, out, num_workers=1, progress=False)
  manifest = pipeline.read_manifest(out, "train", sorted(set_files))
  bos, eos = chunked.special_ids(manifest, bool(args.add_bos), bool(args.add_eos))
  summary = {"tokenizer": tokenizer, "prepared": out, "sets": {},
             "tasks": {name: {"items": len(items), "path": f"{TASKS}/{name}.jsonl"}
                       for name, items in tasks.items()}}
  for name in sorted(set_files):
    entry = manifest["splits"]["train"][name]
    table = chunked.plan_chunks(manifest, "train", name, int(args.chunk_len), bos is not None, eos is not None)
    summary["sets"][name] = {"documents": entry["documents"], "bytes": entry["bytes"], "tokens": entry["tokens"],
                             "chunks": len(table)}
  for name, needed in dict(args.get("required_chunks", {})).items():
    have = summary["sets"][name]["chunks"]
    if have < needed:
      raise DataError(f"set {name!r} has {have} chunks of {args.chunk_len} tokens but the study needs {needed}; "
                       "raise its byte budget (stages.data.args.budgets) or lower the chunk counts")
  return summary


def load_eval_sets(prepared: str, sets, chunk_len: int, add_bos: bool, add_eos: bool) -> dict[str, list]:
  """{name: chunks} for sets {name: [source, count]} (the first `count` chunks of each source)."""
  return {name: chunked.load_chunks(prepared, "train", source, chunk_len, add_bos, add_eos, num_chunks=int(count))
          for name, (source, count) in dict(sets).items()}


def model_paths(args, context) -> dict[str, str]:
  """{label: model path} of an evaluate stage: args.models {label: path}, args.seeded [stage] (every seed:
  "<stage>_seed<i>") and args.runs {label: run dir} (every kept checkpoint step: "<label>@<step>")."""
  from yijax.train import params_io

  out = dict(args.get("models", {}))
  for stage in args.get("seeded", []):
    for seed, stage_dir in zip(context.seeds, context.stage_dirs(stage)):
      out[f"{stage}_seed{seed}"] = stage_dir
  for label, run_dir in dict(args.get("runs", {})).items():
    checkpoints = paths.join(run_dir, "checkpoints")
    steps = params_io.complete_steps(checkpoints)
    if not steps:
      raise MissingFileError(f"run {run_dir} ({label}) has no complete checkpoint to evaluate")
    for step in steps:
      out[f"{label}@{step}"] = paths.join(checkpoints, str(step))
  return out


def bits_per_byte(metrics: dict, entry: dict) -> float:
  """Bits per byte of a whole set from its token-weighted loss (nats per token) and the set's tokens per byte
  (manifest counts: every chunk of the set scored)."""
  return float(metrics["token_loss"]) * entry["tokens"] / entry["bytes"] / np.log(2.0)


def evaluate(args, stage_dir: str, context) -> dict:
  """args: models / seeded / runs (model_paths), prepared, sets {name: [source, count]} (count 0: every chunk),
  chunk_len, add_bos, add_eos, ks, batch_size, members / nonmembers (the MIA sets), tasks {name: JSONL of
  multiple-choice items} with tokenizer, bpb [sets of every chunk whose bits per byte to report]. Writes
  STAGE/models/<label>.json; skips models already evaluated."""
  from yijax.data import pipeline
  from yijax.train import params_io
  from yijax.unlearning import evaluate as metrics

  sets = load_eval_sets(args.prepared, args.sets, int(args.chunk_len), bool(args.add_bos), bool(args.add_eos))
  manifest = pipeline.read_manifest(args.prepared, "train", sorted({s for s, _ in dict(args.sets).values()}))
  tasks = {}
  if args.get("tasks"):
    from yijax.data.tokenizer import Tokenizer
    from yijax.eval import multiple_choice

    tokenizer = Tokenizer(args.tokenizer)
    tasks = {name: multiple_choice.load_tasks(path) for name, path in dict(args.tasks).items()}
  out_dir = paths.join(stage_dir, MODELS)
  paths.makedirs(out_dir)
  summary = {}
  for name, path in model_paths(args, context).items():
    result_path = paths.join(out_dir, f"{name}.json")
    if not paths.exists(result_path):
      config, params = params_io.load_model(path)
      result = metrics.evaluate_model(config, params, sets, int(args.chunk_len), args.get("members", "forget"),
                                      args.get("nonmembers", "approximate"), ks=[float(k) for k in args.ks],
                                      batch_size=int(args.batch_size))
      for set_name in args.get("bpb", []):
        source, count = dict(args.sets)[set_name]
        if int(count):
          raise DataError(f"bits per byte of {set_name!r} needs every chunk of it: set its count to 0")
        result[set_name]["bits_per_byte"] = bits_per_byte(result[set_name],
                                                          manifest["splits"]["train"][source])
      result["tasks"] = {task: {k: v for k, v in multiple_choice.score_multiple_choice(
          config, params, tokenizer, items, batch_size=64, add_bos=bool(args.add_bos)).items()
                                if k in ("acc", "n")} for task, items in tasks.items()}
      result["model"] = paths.resolve(path, "model")
      paths.write_text(result_path, json.dumps(result, indent=1, sort_keys=True))
    result = paths.read_json(result_path, f"the results of {name!r}")
    summary[name] = {s: round(result[s]["perplexity"], 4) for s in sets}
    line = ", ".join([f"{s} ppl {v:.2f}" for s, v in summary[name].items()] +
                     [f"{t} acc {v['acc']:.3f}" for t, v in result.get("tasks", {}).items()])
    auc = result.get("mia", {}).get("auc", {})
    log.info(f"[evaluate] {name}: {line}" + (f", MIA AUC(K=100) {auc.get('100', np.nan):.3f}" if auc else ""))
  return {"models": len(summary)}


def analyze(args, stage_dir, context) -> dict:
  """The report stage: results.json, report.md and forget_vs_general.png (yijax/unlearning/report.py)."""
  return report.write_report(args, stage_dir, context)
