"""yijax eval --ckpt=DIR [--data=PREPARED_DIR] [--multiple_choice=FILE.jsonl ...]

Perplexity and bits per byte on held-out prepared data (packing- and
mask-aware), and multiple-choice accuracy (acc, acc_norm) scored the way
lm-evaluation-harness scores it. Prints one JSON object; --output writes it.
"""

from __future__ import annotations

import json
import os

from absl import flags

from yijax.cli import UsageError


def define_flags(fv, argv):
  flags.DEFINE_string("ckpt", None, "model dir, checkpoint step dir or run dir", flag_values=fv)
  flags.DEFINE_string("data", None, "prepared data dir (`yijax prepare --out`) for perplexity / bpb", flag_values=fv)
  flags.DEFINE_string("split", "validation", "split of --data to score", flag_values=fv)
  flags.DEFINE_list("sources", None, "sources of --data (default: all of the split)", flag_values=fv)
  flags.DEFINE_integer("seq_len", 0, "packed row length (default: min(1024, model.max_seq_len))", flag_values=fv)
  flags.DEFINE_integer("batch_size", 8, "rows per batch", flag_values=fv)
  flags.DEFINE_integer("max_batches", 0, "score at most this many batches (0 = the whole split)", flag_values=fv)
  flags.DEFINE_multi_string("multiple_choice", [], "JSONL task file(s): context, choices, answer", flag_values=fv)
  flags.DEFINE_string("tokenizer", None, "sentencepiece model (default: the checkpoint's / the data's)",
                      flag_values=fv)
  flags.DEFINE_boolean("add_bos", False, "prefix BOS to multiple-choice contexts", flag_values=fv)
  flags.DEFINE_string("records_dir", None, "write per-example multiple-choice records here", flag_values=fv)
  flags.DEFINE_string("output", None, "write the results JSON here", flag_values=fv)


def run(fv, args):
  from yijax.data import pipeline
  from yijax.data.tokenizer import Tokenizer
  from yijax.eval import multiple_choice, perplexity
  from yijax.train import params_io

  if not fv.ckpt:
    raise UsageError("--ckpt is required")
  if not fv.data and not fv.multiple_choice:
    raise UsageError("nothing to evaluate: give --data (perplexity) and/or --multiple_choice=FILE.jsonl")
  location = params_io.locate_model(fv.ckpt)
  config, params = params_io.load_model(fv.ckpt)
  config = config.replace(remat_policy="none")
  results: dict = {"ckpt": os.path.abspath(fv.ckpt)}
  tokenizer_path = fv.tokenizer or location.tokenizer
  if fv.data:
    data_cfg = pipeline.default_data_config()
    manifest = pipeline.read_manifest(fv.data, fv.split)
    names = fv.sources or pipeline.available_sources(manifest, fv.split)
    with data_cfg.unlocked():
      data_cfg.prepared_dir = fv.data
      data_cfg.sources = {name: 1.0 for name in names}
    pipeline.check_tokenizer(manifest, config.vocab_size)
    seq_len = fv.seq_len or min(1024, config.max_seq_len)
    batches = pipeline.eval_batches(data_cfg, fv.split, seq_len, fv.batch_size, fv.max_batches or None)
    tokenizer_path = tokenizer_path or manifest["tokenizer"]["path"]
    data_tokenizer = Tokenizer(manifest["tokenizer"]["path"])
    results["perplexity"] = {"data": fv.data, "split": fv.split, "sources": names, **perplexity.evaluate_perplexity(
        config, params, batches, data_tokenizer.byte_lengths())}
  if fv.multiple_choice:
    if not tokenizer_path:
      raise UsageError("--multiple_choice needs a tokenizer: --tokenizer=PATH (none in --ckpt)")
    tokenizer = Tokenizer(tokenizer_path)
    results["multiple_choice"] = {}
    for path in fv.multiple_choice:
      name = os.path.splitext(os.path.basename(path))[0]
      records = os.path.join(fv.records_dir, name + ".jsonl") if fv.records_dir else None
      scored = multiple_choice.score_multiple_choice(config, params, tokenizer, multiple_choice.load_tasks(path),
                                                     batch_size=fv.batch_size, add_bos=fv.add_bos,
                                                     records_path=records)
      results["multiple_choice"][name] = {k: v for k, v in scored.items() if k != "records"}
  text = json.dumps(results, indent=2)
  print(text)
  if fv.output:
    with open(fv.output, "w") as f:
      f.write(text + "\n")
  return 0
