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


def _tokenizer(args, stage_dir: str, train_text: str) -> str:
  """args.tokenizer, or a BPE tokenizer trained on the pretraining text only (into `stage_dir`, local)."""
  from yijax.data.tokenizer import MODEL_FILE, Tokenizer, train_tokenizer

  if args.get("tokenizer"):
    return Tokenizer(args.tokenizer).path
  out = os.path.join(stage_dir, "tokenizer")
  if not os.path.exists(os.path.join(out, MODEL_FILE)):
    sample = os.path.join(stage_dir, "tokenizer_sample.txt")
    with open(sample, "w", encoding="utf-8") as f, open(train_text, encoding="utf-8") as docs:
      for line in docs:
        f.write(json.loads(line)["text"] + "\n")
    train_tokenizer([sample], int(args.vocab_size), out)
    os.remove(sample)
  return Tokenizer(out).path


def prepare_data(args, stage_dir: str, context) -> dict:
  """args: kind ("embedded": budgets, code_doc_bytes, prose_doc_bytes | "paths": paths {set: JSONL}),
  tokenizer ("" = train one of vocab_size on the pretraining set), chunk_len, add_bos, add_eos,
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
  if args.kind == "embedded":
    sets = splits.embedded_sets(dict(args.budgets), tuple(args.code_doc_bytes), tuple(args.prose_doc_bytes))
    set_files = splits.write_jsonl(sets, text_dir)
  elif args.kind == "paths":
    set_files = dict(args.paths)
    missing = [name for name, path in set_files.items() if not os.path.isfile(path)]
    if missing:
      raise MissingFileError(f"unlearning sets {missing} not found at {[set_files[m] for m in missing]}; set "
                              "stages.data.args.paths.<set> to JSONL files with a `text` field")
  else:
    raise DataError(f"stages.data.args.kind={args.kind!r}: choose 'embedded' or 'paths'")
  if "pretrain" not in set_files and not args.get("tokenizer"):
    raise DataError("stages.data.args.tokenizer is required with kind='paths' (the model's tokenizer.model)")
  tokenizer = _tokenizer(args, stage_dir, set_files.get("pretrain", ""))
  specs = [prepare.SourceSpec(name, "train", (path,), "text", "jsonl") for name, path in sorted(set_files.items())]
  out = os.path.join(stage_dir, PREPARED)
  manifest = prepare.prepare(specs, tokenizer, out, num_workers=1, progress=False)
  manifest = pipeline.read_manifest(out, "train", sorted(set_files))
  bos, eos = chunked.special_ids(manifest, bool(args.add_bos), bool(args.add_eos))
  summary = {"tokenizer": tokenizer, "prepared": out, "sets": {}}
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


def evaluate(args, stage_dir: str, context) -> dict:
  """args: models {name: model or run dir}, prepared, sets {name: [source, count]}, chunk_len, add_bos,
  add_eos, ks, batch_size. Writes STAGE/models/<name>.json; skips models already evaluated."""
  from yijax.train import params_io
  from yijax.unlearning import evaluate as metrics

  sets = load_eval_sets(args.prepared, args.sets, int(args.chunk_len), bool(args.add_bos), bool(args.add_eos))
  out_dir = paths.join(stage_dir, MODELS)
  paths.makedirs(out_dir)
  summary = {}
  for name, path in dict(args.models).items():
    result_path = paths.join(out_dir, f"{name}.json")
    if not paths.exists(result_path):
      config, params = params_io.load_model(path)
      result = metrics.evaluate_model(config, params, sets, int(args.chunk_len), ks=[float(k) for k in args.ks],
                                      batch_size=int(args.batch_size))
      result["model"] = paths.resolve(path, "model")
      paths.write_text(result_path, json.dumps(result, indent=1, sort_keys=True))
    result = paths.read_json(result_path, f"the results of {name!r}")
    summary[name] = {s: round(result[s]["perplexity"], 4) for s in sets}
    line = ", ".join(f"{s} ppl {v:.2f}" for s, v in summary[name].items())
    auc = result.get("mia", {}).get("auc", {})
    log.info(f"[evaluate] {name}: {line}" + (f", MIA AUC(K=100) {auc.get('100', np.nan):.3f}" if auc else ""))
  return {"models": len(summary)}


def analyze(args, stage_dir, context) -> dict:
  """The report stage: results.json, report.md and forget_vs_general.png (yijax/unlearning/report.py)."""
  return report.write_report(args, stage_dir, context)
