"""Stages of the long-context study (experiments/long_context): pass-key data, the needle grid, the report.

  prepare_data  a tokenizer trained on filler, pass-key sentences and the embedded corpus -> STAGE/prepared:
                `passkey` (filler sentences with "The pass key is K. Remember it." at a random depth, the
                question and K at the end; most documents short, some up to the target length) and the
                embedded corpus (python_docs, python_code); STAGE/haystack.txt (held-out filler)
  needle        the needle grid of one model for several pass keys (yijax/eval/needle.py), the
                per-cell mean over keys in STAGE/needle.jsonl and its heatmap STAGE/needle.png

Pass keys come from a small fixed set (KEYS): random keys would need an induction head that a tiny
model on CPU does not form quickly (tests/eval/test_needle.py); with a fixed set the question is the
same for every key, so answering right means reading the needle. A model that ignores the needle
answers one key for all and scores at most 1/len(keys) averaged over the keys it is asked.
All are `python` stages: fn(args, stage_dir, context) -> summary.
"""

from __future__ import annotations

import logging
import json
import os

import numpy as np

from yijax import paths
from yijax.errors import ConfigError
from yijax.studies import common

log = logging.getLogger(__name__)

PREPARED = "prepared"
HAYSTACK = "haystack.txt"
KEYS = ("71432", "28195", "50376", "64819", "93057", "15284", "37960", "82641")
NOUNS = "grass sky sun river tree road house cat dog bird stone cloud moon field door lamp book chair wind rain".split()
ADJECTIVES = ("green blue yellow long tall wide old small quiet bright dark warm cold soft red heavy calm loud "
              "empty full").split()


def filler(rng: np.random.Generator, sentences: int) -> str:
  """Random filler sentences ("The sky is blue."): each noun has its adjective, the order is random."""
  return " ".join(f"The {NOUNS[i]} is {ADJECTIVES[i]}." for i in rng.integers(len(NOUNS), size=sentences))


def passkey_task(key: str):
  from yijax.eval import needle

  return needle.NeedleTask(needle=f"The pass key is {key}. Remember it.", question=needle.PASSKEY.question,
                           answer=key, template=needle.PASSKEY.template)


def document_lengths(rng: np.random.Generator, count: int, min_tokens: int, short_max: int, long_max: int,
                     long_fraction: float) -> np.ndarray:
  """Document lengths in tokens: a `long_fraction` of them log-uniform in (short_max, long_max], the
  rest uniform in [min_tokens, short_max] (a natural-looking mixture: most documents short, most long
  tokens in few documents)."""
  short = rng.integers(min_tokens, short_max + 1, size=count)
  if long_max <= short_max or long_fraction <= 0:
    return short
  long = np.exp(rng.uniform(np.log(short_max + 1), np.log(long_max), size=count)).astype(np.int64)
  return np.where(rng.random(count) < long_fraction, long, short)


def passkey_documents(tokenizer, rng: np.random.Generator, lengths, keys=KEYS) -> list[list[int]]:
  """Token ids of pass-key documents of about the given lengths: filler with the needle at a uniform
  depth (on a sentence boundary), the question, " K" and nothing else (the pipeline adds bos/eos)."""
  from yijax.eval import needle

  docs = []
  for length in lengths:
    key = keys[rng.integers(len(keys))]
    builder = needle.PromptBuilder(tokenizer, passkey_task(key))
    answer = tokenizer.encode(" " + key)
    prompt_tokens = max(int(length) - len(answer), builder.fixed_tokens + 2)
    hay = needle.Haystack(tokenizer, filler(rng, prompt_tokens // 5 + 2))  # ~6 tokens a sentence
    docs.append(builder.build(hay, prompt_tokens, float(rng.uniform(0, 100))).ids + answer)
  return docs


def _tokenizer(stage_dir: str, vocab_size: int, embedded_mb: float, seed: int):
  """STAGE/tokenizer, trained unless it is there (`stage_dir`: a local directory)."""
  from yijax.data import corpus
  from yijax.data.tokenizer import MODEL_FILE, Tokenizer, train_tokenizer

  out = os.path.join(stage_dir, "tokenizer")
  if not os.path.exists(os.path.join(out, MODEL_FILE)):
    sample = os.path.join(stage_dir, "tokenizer_sample.txt")
    corpus.sample_text(sample, int(embedded_mb * 2**20))
    rng = np.random.default_rng(seed + 7)
    with open(sample, "a", encoding="utf-8") as f:
      for i in range(2000):
        key = KEYS[i % len(KEYS)]
        f.write(f"{filler(rng, 5)}\n{passkey_task(key).parts()[1]}{filler(rng, 3)}\n"
                f"{passkey_task(key).question} {key}\n")
    train_tokenizer([sample], vocab_size, out)
    os.remove(sample)
  return Tokenizer(out)


def prepare_data(args, stage_dir: str, context) -> dict:
  """args: seed, vocab_size, tokenizer_embedded_mb, embedded_max_docs (0 = all), passkey_documents,
  min_tokens, short_max (the pretraining length), long_max (the target length), long_fraction,
  haystack_sentences. Built in a local directory and copied up when the stage dir is a gs:// URL."""
  from yijax.data import prepare
  from yijax.data.tokenizer import MODEL_FILE

  with common.local_stage_dir(stage_dir) as local:
    tokenizer = _tokenizer(local, args.vocab_size, args.tokenizer_embedded_mb, args.seed)
    out = os.path.join(local, PREPARED)
    embedded, fingerprint = prepare.embedded_specs(out, max_docs=args.embedded_max_docs or None)
    manifest = prepare.prepare(embedded, tokenizer.path, out, num_workers=1, progress=False,
                               corpus_fingerprint=fingerprint)
    meta = dict(tokenizer.meta(), path=tokenizer.path)
    rng = np.random.default_rng(args.seed)
    lengths = document_lengths(rng, args.passkey_documents, args.min_tokens, args.short_max, args.long_max,
                               args.long_fraction)
    docs = passkey_documents(tokenizer, rng, lengths)
    manifest = prepare.write_token_source(out, "train", "passkey", docs, meta)
    val_lengths = document_lengths(rng, max(args.passkey_documents // 20, 8), args.min_tokens, args.short_max,
                                   args.long_max, args.long_fraction)
    manifest = prepare.write_token_source(out, "validation", "passkey",
                                          passkey_documents(tokenizer, rng, val_lengths), meta)
    with open(os.path.join(local, HAYSTACK), "w", encoding="utf-8") as f:
      f.write(filler(np.random.default_rng(args.seed + 1000), args.haystack_sentences) + "\n")
  sizes = np.array([len(d) for d in docs])
  long = sizes > args.short_max
  summary = {"tokenizer": paths.join(stage_dir, "tokenizer", MODEL_FILE), "prepared": paths.join(stage_dir, PREPARED),
             "haystack": paths.join(stage_dir, HAYSTACK),
             "tokens": {f"{split}/{name}": entry["tokens"] for split, sources in manifest["splits"].items()
                        for name, entry in sources.items()},
             "passkey_documents": len(docs), "passkey_long_documents": int(long.sum()),
             "passkey_long_token_share": float(sizes[long].sum() / sizes.sum()),
             "passkey_max_tokens": int(sizes.max())}
  log.info(json.dumps(summary, indent=1))
  return summary


def length_buckets(records, edges) -> dict[str, float]:
  """Mean score of the cells whose length is in (edges[i], edges[i+1]], keyed "lo-hi"."""
  out = {}
  for lo, hi in zip(edges[:-1], edges[1:]):
    scores = [r["score"] for r in records if lo < r["length"] <= hi]
    if scores:
      out[f"{lo + 1}-{hi}"] = float(np.mean(scores))
  return out


def needle_stage(args, stage_dir: str, context) -> dict:
  """args: model (a run or model dir), tokenizer, haystack (a text file), min_length, max_length,
  num_lengths, num_depths, pass_keys (pass keys, each its own grid, averaged per cell; [] = the default
  San Francisco needle of Fu et al.), max_new_tokens, batch_size, train_length (the dashed line), title, bucket_edges."""
  from yijax.data.tokenizer import Tokenizer
  from yijax.eval import needle
  from yijax.eval.generate import Generator
  from yijax.train import params_io

  config, params = params_io.load_model(args.model)
  tokenizer = Tokenizer(args.tokenizer)
  text = paths.read_text(args.haystack)
  haystack = needle.Haystack(tokenizer, text)
  lengths = needle.context_lengths(args.min_length, args.max_length, args.num_lengths)
  depths = needle.needle_depths(args.num_depths)
  generator = Generator(config, params)
  tasks = {key: passkey_task(key) for key in args.pass_keys} if args.pass_keys else {"default": needle.NeedleTask()}
  per_key = {}
  for key, task in tasks.items():
    per_key[key] = needle.run_needle(
        config, params, tokenizer, lengths, depths, task=task, haystack=haystack,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, add_bos=True,
        results_path=paths.join(stage_dir, f"needle_{key}.jsonl"), generator=generator,
        model_id=paths.resolve(args.model, "model"), log=print)
  records = []
  for cell, *rows in zip(*per_key.values()):
    records.append({"length": cell["length"], "depth": cell["depth"],
                    "score": float(np.mean([r["score"] for r in (cell, *rows)])),
                    "by_key": {k: r["score"] for k, r in zip(per_key, (cell, *rows))},
                    "outputs": {k: r["output"] for k, r in zip(per_key, (cell, *rows))}})
  paths.write_text(paths.join(stage_dir, needle.RESULTS_FILE), "".join(json.dumps(r) + "\n" for r in records))
  mean = needle.mean_score(records)
  title = f"{args.title}\nrope_theta {config.rope_theta:g}, trained at {args.train_length}: mean {mean:.3f}"
  needle.plot_heatmap(records, paths.join(stage_dir, needle.HEATMAP_FILE), train_length=args.train_length,
                      title=title)
  summary = {"mean_score": mean, "cells": len(records), "lengths": lengths, "depths": depths,
             "keys": list(tasks), "rope_theta": config.rope_theta, "max_seq_len": config.max_seq_len,
             "by_length": length_buckets(records, list(args.bucket_edges)),
             "compilations": dict(generator.trace_counts)}
  log.info(json.dumps(summary))
  return summary


def prepare_paths(args, stage_dir: str, context) -> dict:
  """The paper-scale data from files: args.tokenizer, args.sources {name: JSONL path or glob}."""
  from yijax.data import prepare

  sources = dict(args.sources)
  if not sources or not args.tokenizer:
    raise ConfigError("stages.data.args needs tokenizer and sources; set --config.paths.tokenizer=PATH and "
                     "--config.paths.sources.<name>=GLOB")
  with common.local_stage_dir(stage_dir) as local:
    manifest = prepare.prepare([prepare.parse_source(f"{name}={path}") for name, path in sources.items()],
                               args.tokenizer, os.path.join(local, PREPARED), progress=False)
  return {"prepared": paths.join(stage_dir, PREPARED), "tokens": {f"{s}/{n}": e["tokens"] for s, src in manifest["splits"].items()
                                      for n, e in src.items()}}

def _train_summary(run_dir: str, run) -> dict:
  records = [json.loads(line) for line in paths.read_text(paths.join(run_dir, "metrics.jsonl")).splitlines()]
  tail = records[-max(1, len(records) // 10):]
  return {"steps": records[-1]["step"], "tokens": records[-1]["tokens_seen"],
          "loss_last": float(np.mean([r["loss"] for r in tail])), "rope_theta": float(run.model.rope_theta),
          "seq_len": int(run.train.seq_len), "batch_size": int(run.train.batch_size), "lr": float(run.optimizer.lr),
          "schedule": run.optimizer.schedule, "length_upsampling": run.data.length_upsampling.to_dict(),
          "sources": run.data.sources.to_dict()}


def report_stage(args, stage_dir, context) -> dict:
  stages = context.study.stages
  results = {"data": context.summaries["data"], "train": {}, "needle": {}}
  for name in ["pretrain"] + list(args.arms):
    results["train"][name] = _train_summary(context.stage_dir(name), stages[name].run)
  for name in args.needles:
    summary = context.summaries[name]
    results["needle"][name] = {k: summary[k] for k in ("mean_score", "by_length", "rope_theta", "cells", "keys")}
    paths.copy_file(paths.join(context.stage_dir(name), "needle.png"), paths.join(context.workdir, f"{name}.png"))
  buckets = list(results["needle"][args.needles[0]]["by_length"])
  header = "| model | rope_theta | trained at | " + " | ".join(f"length {b}" for b in buckets) + " | all |"
  lines = [f"Mean pass-key score (fraction of cells x keys answered) by context length, {args.short} -> "
           f"{args.long} tokens.", "", header, "|---" * (len(buckets) + 4) + "|"]
  for name in args.needles:
    n = results["needle"][name]
    arm = "pretrain" if name == "needle_before" else "extend" + name[len("needle_after"):]
    t = results["train"][arm]
    lines.append(f"| {name} | {n['rope_theta']:g} | {t['seq_len']} | "
                 + " | ".join(f"{n['by_length'].get(b, float('nan')):.3f}" for b in buckets)
                 + f" | {n['mean_score']:.3f} |")
  lines += ["", "| run | steps | tokens | seq_len | lr (schedule) | rope_theta | length upsampling | final loss |",
            "|---|---|---|---|---|---|---|---|"]
  for name, t in results["train"].items():
    up = t["length_upsampling"]
    upsampling = "none" if up["mode"] == "none" else f"{up['mode']} (> {up['threshold']} kept, short p={up['keep_short_prob']})"
    lines.append(f"| {name} | {t['steps']} | {t['tokens']:,} | {t['seq_len']} | {t['lr']:g} ({t['schedule']}) | "
                 f"{t['rope_theta']:g} | {upsampling} | {t['loss_last']:.3f} |")
  paths.write_text(paths.join(context.workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
  paths.write_text(paths.join(context.workdir, "report.md"), "\n".join(lines) + "\n")
  log.info("\n".join(lines))
  return {"needle": {k: v["mean_score"] for k, v in results["needle"].items()}}
