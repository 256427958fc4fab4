"""Scoring built tasks with a model: flat metrics per task.

multiple_choice -> {"acc", "acc_norm"} plus "acc_<group>" for items with a
group (arith: acc_add / acc_compare; facts: acc_k0 .. acc_k16), scored by
`yijax.eval.multiple_choice` exactly as `yijax eval --multiple_choice`
scores a JSONL file. bpb -> {"bits_per_byte", "loss"} through
`yijax.eval.perplexity` on the pieces tokenized with the model's tokenizer
(BOS first, cut into `seq_len` rows). induction -> {"acc", "loss"}: greedy
accuracy and mean NLL on the predictable tokens of the repeated span.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np

from yijax.errors import ConfigError
from yijax.eval import multiple_choice, perplexity
from yijax.train import scoring
from yijax.eval.tasks.base import Task
from yijax.eval.tasks.registry import build_task, check_options

EVAL_OPTIONS = ("batch_size", "max_len", "add_bos", "seq_len")


def _multiple_choice_metrics(config, params, tokenizer, task: Task, batch_size: int, max_len: int | None,
                             add_bos: bool | None, scorer: scoring.Scorer) -> dict[str, float]:
  max_len = min(max_len or config.max_seq_len, config.max_seq_len)
  scored = multiple_choice.score_multiple_choice(
      config, params, tokenizer, task.items, batch_size=batch_size, max_len=max_len,
      add_bos=task.add_bos if add_bos is None else add_bos, target_delimiter=task.target_delimiter, scorer=scorer)
  metrics = {"acc": scored["acc"], "acc_norm": scored["acc_norm"]}
  by_group = collections.defaultdict(list)
  for item, record in zip(task.items, scored["records"]):
    if "group" in item:
      by_group[str(item["group"])].append(record["acc"])
  for group in sorted(by_group, key=_group_order):
    metrics[f"acc_{group}"] = float(np.mean(by_group[group]))
  return metrics


def _group_order(group: str):
  """k2 before k16: numeric suffixes compare as numbers."""
  digits = group.lstrip("abcdefghijklmnopqrstuvwxyz_")
  return (group[:len(group) - len(digits)], int(digits) if digits.isdigit() else -1, group)


def bpb_batches(tokenizer, texts: Sequence[str], seq_len: int, batch_size: int) -> list[dict[str, np.ndarray]]:
  """Texts -> [BOS] + ids, cut into chunks of at most seq_len, packed in order into padded rows.

  Each chunk is its own segment (positions restart), so every row is
  independent of how the texts were grouped into batches.
  """
  chunks = []
  for text in texts:
    ids = tokenizer.encode(text, add_bos=True)
    chunks += [ids[i:i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i:i + seq_len]) > 1]
  rows, current = [], []
  for chunk in chunks:
    if current and sum(map(len, current)) + len(chunk) > seq_len:
      rows.append(current)
      current = []
    current.append(chunk)
  if current:
    rows.append(current)
  batches = []
  for start in range(0, len(rows), batch_size):
    tokens = np.zeros((batch_size, seq_len), np.int32)
    segments = np.zeros((batch_size, seq_len), np.int32)
    for r, row in enumerate(rows[start:start + batch_size]):
      offset = 0
      for s, chunk in enumerate(row, start=1):
        tokens[r, offset:offset + len(chunk)] = chunk
        segments[r, offset:offset + len(chunk)] = s
        offset += len(chunk)
    batches.append({"tokens": tokens, "segment_ids": segments})
  return batches


def _bpb_metrics(config, params, tokenizer, task: Task, batch_size: int, seq_len: int | None,
                 scorer: scoring.Scorer) -> dict[str, float]:
  seq_len = min(seq_len or 1024, config.max_seq_len)
  tokenizer.check_fits(config.vocab_size)
  table = np.zeros(config.vocab_size, np.int32)
  lengths = tokenizer.byte_lengths()
  table[:len(lengths)] = lengths
  batches = bpb_batches(tokenizer, [piece["text"] for piece in task.data], seq_len, batch_size)
  result = perplexity.evaluate_perplexity(config, params, batches, table, scorer=scorer)
  return {"bits_per_byte": result["bits_per_byte"], "loss": result["loss"]}


def _induction_metrics(config, params, task: Task, batch_size: int, scorer: scoring.Scorer) -> dict[str, float]:
  tokens = np.asarray(task.data["tokens"], np.int32)
  start, span = task.data["span_start"], task.data["span_len"]
  if tokens.shape[1] > config.max_seq_len or tokens.max() >= config.vocab_size:
    raise ConfigError(f"induction sequences of {tokens.shape[1]} tokens (ids < {tokens.max() + 1}) do not fit "
                     f"model.max_seq_len={config.max_seq_len} / model.vocab_size={config.vocab_size}; "
                     "lower span_len or pass vocab_size")
  # target t + 1 is the repeat's token j (j >= 1) when t + 1 = start + span + j
  scored = np.arange(start + span + 1, start + 2 * span) - 1
  log_probs, greedy = [], []
  for first in range(0, len(tokens), batch_size):
    rows = tokens[first:first + batch_size]
    padded = np.concatenate([rows, np.repeat(rows[-1:], batch_size - len(rows), 0)]) if len(rows) < batch_size \
        else rows
    lp, gr = scorer.token_log_probs(params, padded[:, :-1], padded[:, 1:])
    log_probs.append(lp[:len(rows), scored])
    greedy.append(gr[:len(rows), scored])
  return {"acc": float(np.mean(np.concatenate(greedy))), "loss": float(-np.mean(np.concatenate(log_probs)))}


def evaluate_task(config, params, tokenizer, task: Task, batch_size: int = 8, max_len: int | None = None,
                  add_bos: bool | None = None, seq_len: int | None = None,
                  scorer: scoring.Scorer | None = None) -> dict[str, float]:
  """Flat metrics of one built task (see the module docstring); scorer: a `scoring.Scorer` on the run's
  mesh (default: one on the parameters' device)."""
  config = config.replace(remat_policy="none")
  scorer = scorer or scoring.Scorer(config)
  if task.kind == "multiple_choice":
    if tokenizer is None:
      raise ConfigError(f"task {task.name!r} is text: pass the model's tokenizer")
    return _multiple_choice_metrics(config, params, tokenizer, task, batch_size, max_len, add_bos, scorer)
  if task.kind == "bpb":
    if tokenizer is None:
      raise ConfigError(f"task {task.name!r} is text: pass the model's tokenizer")
    return _bpb_metrics(config, params, tokenizer, task, batch_size, seq_len, scorer)
  return _induction_metrics(config, params, task, batch_size, scorer)


def evaluate_tasks(config, params: Any, tokenizer, names_or_paths: Sequence[str], seed: int = 0,
                   scorer: scoring.Scorer | None = None, **options) -> dict[str, dict[str, float]]:
  """{name_or_path: metrics} for battery task names and JSONL task files.

  options: build options of the tasks (num_items, context_lines, facts_k,
  facts_per_group, bpb_max_bytes, span_len, num_sequences, ...; each task
  takes the ones it knows) and scoring options batch_size (8), max_len
  (model.max_seq_len), seq_len (bpb rows, 1024), add_bos (default: True for
  battery tasks, whose models saw BOS at every document start; False for
  JSONL files, as lm-eval and `yijax eval --multiple_choice` score them).
  """
  check_options(options, extra=EVAL_OPTIONS)
  scoring_options = {k: options.pop(k) for k in EVAL_OPTIONS if k in options}
  if tokenizer is None:
    options.setdefault("vocab_size", config.vocab_size)  # induction draws ids 3..vocab_size-1
  results = {}
  for name in names_or_paths:
    task = build_task(name, seed, tokenizer, _lenient=True, **options)
    results[name] = evaluate_task(config, params, tokenizer, task, scorer=scorer, **scoring_options)
  return results
