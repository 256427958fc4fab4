"""Stages of the long-context study (experiments/long_context): natural data, the evaluation of one model, the report.

  prepare_data  a tokenizer trained on the embedded corpus's train split and the training retrieval lines ->
                STAGE/prepared, train split:
                  python_docs, python_code  the embedded corpus's train documents cut into consecutive pieces
                                whose lengths have a natural shape (most short, a long tail up to the target
                                length; each source its own long fraction, code the longer, as books and code
                                are in SlimPajama), every train token used once
                  passkey       short retrieval documents (never longer than the pretraining length): a slice of
                                train text with a needle in one of TRAIN_PHRASINGS and a random 5-digit key,
                                then the question and the key
                validation split: the embedded corpus's held-out documents, whole;
                STAGE/haystack.txt (held-out documents: the needle haystack) and STAGE/loss_windows.npy (held-out
                token windows of the target length + 1: the per-length validation loss). It fails when the
                evaluation phrasing (EVAL_PHRASING) occurs anywhere in the training text.
  evaluate      one model: the needle grid with EVAL_PHRASING (a phrasing and a haystack training never saw) and
                random keys, and the validation loss by context length -> STAGE/needle.jsonl, needle.png, loss.json
  report        yijax/analysis/long_context.py: tables over seeds, the computed claims, the plots

All are `python` stages: fn(args, stage_dir, context) -> summary.
"""

from __future__ import annotations

import io
import json
import logging
import os

import numpy as np

from yijax import paths
from yijax.errors import ConfigError, DataError
from yijax.studies import common

log = logging.getLogger(__name__)

PREPARED = "prepared"
HAYSTACK = "haystack.txt"
WINDOWS = "loss_windows.npy"
LOSS = "loss.json"
NATURAL = ("python_docs", "python_code")
TEMPLATE = "{context}\n{question}"
# (needle, question) of the retrieval documents in training; the evaluation asks with EVAL_PHRASING only
TRAIN_PHRASINGS = (
    ("The pass key is {key}. Remember it.", "What is the pass key? The pass key is"),
    ("The secret code is {key}.", "What is the secret code? The secret code is"),
    ("My locker number is {key}.", "What is my locker number? My locker number is"),
    ("The ticket number is {key}.", "What is the ticket number? The ticket number is"),
)
EVAL_PHRASING = ("The vault combination is {key}.", "What is the vault combination? The vault combination is")
EVAL_MARKER = "vault combination"  # must occur nowhere in the training text


def random_keys(rng: np.random.Generator, count: int) -> list[str]:
  """Random 5-digit keys (10000-99999)."""
  return [str(k) for k in rng.integers(10_000, 100_000, size=count)]


def retrieval_task(phrasing: tuple[str, str], key: str):
  from yijax.eval import needle

  return needle.NeedleTask(needle=phrasing[0].format(key=key), question=phrasing[1], answer=key, template=TEMPLATE)


def piece_lengths(rng: np.random.Generator, count: int, min_tokens: int, short_max: int, long_max: int,
                  long_fraction: float) -> np.ndarray:
  """Lengths in tokens: a `long_fraction` log-uniform in (short_max, long_max], the rest uniform in
  [min_tokens, short_max] (most documents short, most long tokens in few documents)."""
  short = rng.integers(min_tokens, short_max + 1, size=count)
  if long_max <= short_max or long_fraction <= 0:
    return short
  long = np.exp(rng.uniform(np.log(short_max + 1), np.log(long_max), size=count)).astype(np.int64)
  return np.where(rng.random(count) < long_fraction, long, short)


def cut_pieces(ids: list[int], lengths: np.ndarray, line_ends: np.ndarray) -> list[list[int]]:
  """Consecutive pieces of a document's token ids of about the given lengths (a piece ends after the last
  line-ending token in its final quarter when there is one); the last piece is the remainder."""
  pieces, start, index = [], 0, 0
  while start < len(ids):
    target = int(lengths[index % len(lengths)])
    index += 1
    stop = min(start + target, len(ids))
    if stop < len(ids):
      ends = np.flatnonzero(line_ends[ids[start + 3 * target // 4:stop]])
      if len(ends):
        stop = start + 3 * target // 4 + int(ends[-1]) + 1
    pieces.append(ids[start:stop])
    start = stop
  return pieces


def retrieval_documents(tokenizer, rng: np.random.Generator, texts: list[str], lengths) -> list[list[int]]:
  """Token ids of retrieval documents of about the given lengths: a slice of a random training text with the
  needle (a random TRAIN_PHRASINGS entry, a random key) at a uniform depth on a line or sentence boundary,
  the question and " KEY" (the pipeline adds bos/eos)."""
  from yijax.eval import needle

  docs = []
  for length in lengths:
    key = random_keys(rng, 1)[0]
    builder = needle.PromptBuilder(tokenizer, retrieval_task(TRAIN_PHRASINGS[rng.integers(len(TRAIN_PHRASINGS))], key))
    answer = tokenizer.encode(" " + key)
    prompt_tokens = max(int(length) - len(answer), builder.fixed_tokens + 4)
    text = texts[rng.integers(len(texts))]
    start = int(rng.integers(max(len(text) - 8 * prompt_tokens, 1)))
    hay = needle.Haystack(tokenizer, text[start:start + 8 * prompt_tokens] or "\n")
    docs.append(builder.build(hay, prompt_tokens, float(rng.uniform(0, 100))).ids + answer)
  return docs


def _tokenizer(stage_dir: str, vocab_size: int, embedded_mb: float, seed: int):
  """STAGE/tokenizer, trained unless it is there: an embedded-corpus sample + the training retrieval lines."""
  from yijax.data import corpus
  from yijax.data.tokenizer import MODEL_FILE, Tokenizer, train_tokenizer

  out = os.path.join(stage_dir, "tokenizer")
  if not os.path.exists(os.path.join(out, MODEL_FILE)):
    sample = os.path.join(stage_dir, "tokenizer_sample.txt")
    corpus.sample_text(sample, int(embedded_mb * 2**20))
    rng = np.random.default_rng(seed + 7)
    with open(sample, "a", encoding="utf-8") as f:
      for i, key in enumerate(random_keys(rng, 400)):
        needle_text, question = TRAIN_PHRASINGS[i % len(TRAIN_PHRASINGS)]
        f.write(f"{needle_text.format(key=key)}\n{question} {key}\n")
    train_tokenizer([sample], vocab_size, out)
    os.remove(sample)
  return Tokenizer(out)


def _documents(source: str, split: str, max_docs: int) -> list[str]:
  from yijax.data import corpus

  texts = [text for _, text in corpus.documents(source, split) if text.strip()]
  return texts[:max_docs] if max_docs else texts


def loss_windows(docs: list[list[int]], length: int, max_windows: int) -> np.ndarray:
  """Non-overlapping windows of `length` + 1 tokens from the documents long enough, round-robin over documents
  so that one long file does not fill them all: [windows, length + 1] int32."""
  per_doc = [[doc[i:i + length + 1] for i in range(0, len(doc) - length, length)] for doc in docs]
  windows = []
  for rank in range(max((len(w) for w in per_doc), default=0)):
    windows += [w[rank] for w in per_doc if rank < len(w)]
  if not windows:
    raise DataError(f"no held-out document has {length + 1} tokens for the per-length validation loss; "
                    "use more held-out documents or a shorter target length")
  return np.asarray(windows[:max_windows], np.int32)


def prepare_data(args, stage_dir: str, context) -> dict:
  """args: seed, vocab_size, tokenizer_embedded_mb, embedded_max_docs (per source, 0 = all), min_tokens,
  short_max (the pretraining length), long_max (the target length), long_fraction {source: fraction},
  passkey_documents, loss_windows. Built in a local directory and copied up when the stage dir is a gs:// URL."""
  with common.local_stage_dir(stage_dir) as local:
    summary = _prepare_data(args, local)
  summary.update(tokenizer=paths.join(stage_dir, "tokenizer"), prepared=paths.join(stage_dir, PREPARED),
                 haystack=paths.join(stage_dir, HAYSTACK), windows=paths.join(stage_dir, WINDOWS))
  log.info(json.dumps(summary, indent=1))
  return summary


def _prepare_data(args, stage_dir: str) -> dict:
  from yijax.data import prepare

  tokenizer = _tokenizer(stage_dir, args.vocab_size, args.tokenizer_embedded_mb, args.seed)
  meta = dict(tokenizer.meta(), path=tokenizer.path)
  out = os.path.join(stage_dir, PREPARED)
  rng = np.random.default_rng(args.seed)
  line_ends = np.array([tokenizer.decode([i]).endswith("\n") for i in range(tokenizer.vocab_size)])
  summary, train_texts = {"sources": {}}, []
  for source in NATURAL:
    texts = _documents(source, "train", args.embedded_max_docs)
    train_texts += texts
    lengths = piece_lengths(rng, 4096, args.min_tokens, args.short_max, args.long_max, args.long_fraction[source])
    pieces = [p for ids in tokenizer.encode_batch(texts) for p in cut_pieces(ids, rng.permutation(lengths), line_ends)]
    prepare.write_token_source(out, "train", source, pieces, meta)
    held_out = tokenizer.encode_batch(_documents(source, "validation", args.embedded_max_docs))
    prepare.write_token_source(out, "validation", source, held_out, meta)
    sizes = np.array([len(p) for p in pieces])
    summary["sources"][source] = {"documents": len(pieces), "tokens": int(sizes.sum()),
                                  "long_token_share": float(sizes[sizes > args.short_max].sum() / sizes.sum()),
                                  "long_documents": int((sizes > args.short_max).sum()),
                                  "max_tokens": int(sizes.max()), "validation_documents": len(held_out)}
  # retrieval text: short only (with bos and eos it still fits one pretraining row), random keys
  budget = args.short_max - 2
  lengths = rng.integers(min(args.min_tokens, budget), budget + 1, size=args.passkey_documents)
  docs = [d[:budget] for d in retrieval_documents(tokenizer, rng, train_texts, lengths)]
  prepare.write_token_source(out, "train", "passkey", docs, meta)
  sizes = np.array([len(d) for d in docs])
  summary["sources"]["passkey"] = {"documents": len(docs), "tokens": int(sizes.sum()), "max_tokens": int(sizes.max()),
                                   "long_token_share": 0.0, "long_documents": 0}
  haystack = "\n\n".join(_documents("python_docs", "validation", 0) + _documents("python_code", "validation", 0))
  with open(os.path.join(stage_dir, HAYSTACK), "w", encoding="utf-8") as f:
    f.write(haystack)
  held_out = [[tokenizer.bos_id] + ids for ids in tokenizer.encode_batch(
      _documents("python_docs", "validation", 0) + _documents("python_code", "validation", 0))]
  windows = loss_windows(held_out, args.long_max, args.loss_windows)
  np.save(os.path.join(stage_dir, WINDOWS), windows)
  training_text = "\n".join(train_texts + [tokenizer.decode(d) for d in docs]).lower()
  marker_count = training_text.count(EVAL_MARKER)
  if marker_count:
    raise DataError(f"the evaluation phrasing {EVAL_MARKER!r} occurs {marker_count} times in the training text; "
                    "pick an EVAL_PHRASING that training never saw")
  summary.update(passkey_max_tokens=int(sizes.max()), passkey_documents=len(docs),
                 train_phrasings=[p[0] for p in TRAIN_PHRASINGS], eval_phrasing=EVAL_PHRASING[0],
                 eval_marker_in_training=marker_count, haystack_chars=len(haystack),
                 haystack_in_training=sum(1 for t in train_texts if t and t in haystack),
                 loss_windows=int(windows.shape[0]), loss_window_tokens=int(windows.shape[1] - 1))
  return summary


def length_buckets(records, edges, key: str = "score") -> dict[str, float]:
  """Mean `key` of the records whose length is in (edges[i], edges[i+1]], keyed "lo-hi"."""
  out = {}
  for lo, hi in zip(edges[:-1], edges[1:]):
    scores = [r[key] for r in records if lo < r["length"] <= hi]
    if scores:
      out[f"{lo + 1}-{hi}"] = float(np.mean(scores))
  return out


def loss_by_length(config, params, windows: np.ndarray, edges, batch_size: int, bins: int = 16) -> dict:
  """The validation loss by context length: the mean next-token loss of the windows' positions whose context
  (position + 1 tokens) is in each (edges[i], edges[i+1]] bucket, and a curve over `bins` equal bins."""
  from yijax.train import scoring

  scorer = scoring.Scorer(config)
  length = windows.shape[1] - 1
  losses = []
  for start in range(0, len(windows), batch_size):
    batch = windows[start:start + batch_size]
    rows = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), 0)]) if len(batch) < batch_size \
        else batch
    log_probs, _ = scorer.token_log_probs(params, rows[:, :-1], rows[:, 1:])
    losses.append(-log_probs[:len(batch)])
  per_position = np.concatenate(losses).mean(axis=0)  # [length]: position p predicts token p + 1
  context = np.arange(1, length + 1)
  buckets = {f"{lo + 1}-{hi}": float(per_position[(context > lo) & (context <= hi)].mean())
             for lo, hi in zip(edges[:-1], edges[1:]) if ((context > lo) & (context <= hi)).any()}
  curve = [float(x.mean()) for x in np.array_split(per_position, bins)]
  return {"by_length": buckets, "curve": curve, "curve_ends": [int(x[-1]) for x in np.array_split(context, bins)],
          "windows": int(len(windows)), "tokens": int(len(windows) * length), "mean": float(per_position.mean())}


def evaluate_stage(args, stage_dir: str, context) -> dict:
  """args: model (a run or model dir), tokenizer, haystack (a text file), windows (loss_windows.npy or ""),
  min_length, max_length, num_lengths, num_depths, num_keys, key_seed, phrasing ([needle, question] with {key};
  [] = the default San Francisco needle of Fu et al.), max_new_tokens, batch_size, train_length (the heatmap's
  dashed line), title, bucket_edges, loss_batch_size, layout, scoring (yijax/eval/needle.py)."""
  from yijax.data.tokenizer import Tokenizer
  from yijax.eval import needle
  from yijax.eval.generate import Generator
  from yijax.train import params_io

  config, params = params_io.load_model(args.model)
  tokenizer = Tokenizer(args.tokenizer)
  haystack = needle.Haystack(tokenizer, paths.read_text(args.haystack))
  lengths = needle.context_lengths(args.min_length, args.max_length, args.num_lengths)
  depths = needle.needle_depths(args.num_depths)
  generator = Generator(config, params)
  phrasing = tuple(args.phrasing)
  if phrasing:
    keys = random_keys(np.random.default_rng(args.key_seed), args.num_keys)
    tasks = {key: retrieval_task(phrasing, key) for key in keys}
  else:
    tasks = {"default": needle.NeedleTask()}
  per_key = {}
  for key, task in tasks.items():
    per_key[key] = needle.run_needle(
        config, params, tokenizer, lengths, depths, task=task, haystack=haystack, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, add_bos=True, results_path=paths.join(stage_dir, f"needle_{key}.jsonl"),
        generator=generator, model_id=paths.resolve(args.model, "model"), log=print, layout=args.layout,
        scoring=args.scoring)
  records = []
  for cells in zip(*per_key.values()):
    scores = {k: needle.record_score(r, args.scoring, tasks[k]) for k, r in zip(per_key, cells)}
    records.append({"length": cells[0]["length"], "depth": cells[0]["depth"], "score": float(np.mean(list(scores.values()))),
                    "by_key": scores, "outputs": {k: r["output"] for k, r in zip(per_key, cells)}})
  paths.write_text(paths.join(stage_dir, needle.RESULTS_FILE), "".join(json.dumps(r) + "\n" for r in records))
  mean = needle.mean_score(records)
  title = f"{args.title}\nrope_theta {config.rope_theta:g}, trained at {args.train_length}: mean {mean:.3f}"
  needle.plot_heatmap(records, paths.join(stage_dir, needle.HEATMAP_FILE), train_length=args.train_length, title=title)
  edges = list(args.bucket_edges)
  summary = {"needle": {"mean_score": mean, "cells": len(records), "keys": list(tasks), "lengths": lengths,
                        "depths": depths, "by_length": length_buckets(records, edges),
                        "items_by_length": {f"{lo + 1}-{hi}": int(sum(lo < r["length"] <= hi for r in records) * len(tasks))
                                            for lo, hi in zip(edges, edges[1:]) if any(lo < r["length"] <= hi for r in records)},
                        "phrasing": list(phrasing), "scoring": args.scoring, "layout": args.layout},
             "rope_theta": float(config.rope_theta), "max_seq_len": int(config.max_seq_len),
             "compilations": dict(generator.trace_counts)}
  if args.windows:
    windows = np.load(io.BytesIO(paths.read_bytes(args.windows)))
    summary["loss"] = loss_by_length(config, params, windows, edges, args.loss_batch_size)
    paths.write_text(paths.join(stage_dir, LOSS), json.dumps(summary["loss"], indent=1))
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
  return {"prepared": paths.join(stage_dir, PREPARED),
          "tokens": {f"{s}/{n}": e["tokens"] for s, src in manifest["splits"].items() for n, e in src.items()}}


def report_stage(args, stage_dir: str, context) -> dict:
  """The report (yijax/analysis/long_context.py): args.arms, args.before, args.labels, args.short, args.long,
  args.min_short_score."""
  from yijax.analysis import long_context as analysis

  stages = context.study.stages
  arms = {arm: {"evals": context.seed_summaries(f"eval_{arm}"), "eval_dirs": context.stage_dirs(f"eval_{arm}"),
                "runs": context.stage_dirs(arm), "config": stages[arm].run} for arm in args.arms}
  before = {"eval": context.summaries[args.before], "eval_dir": context.stage_dir(args.before),
            "run": context.stage_dir("pretrain"), "config": stages.pretrain.run}
  payload = analysis.report(arms, before, dict(args.labels), context.summaries.get("data", {}), context.workdir,
                            short=args.short, long=args.long, min_short_score=args.min_short_score,
                            headline=tuple(args.headline), scale=context.study.get("scale"))
  return {"claims": {c["id"]: c["verdict"] for c in payload["claims"]}, "gate": payload["gate"]["passed"]}
