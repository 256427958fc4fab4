"""Multiple-choice evaluation by log-likelihood, scored as lm-evaluation-harness does.

Matches lm-eval 0.4.13 (`output_type: multiple_choice`, `model=hf`, causal LM;
tests/eval/test_multiple_choice.py checks it against lm-eval itself):

* each (context, choice) request scores the continuation
  `target_delimiter + choice` (default delimiter " ");
* tokenization follows `LM._encode_pair`: trailing whitespace of the context
  moves to the continuation, then `whole = encode(context + continuation)`,
  `context_enc = encode(context)` and the continuation tokens are
  `whole[len(context_enc):]` (BOS, when added, is on both); an empty
  context becomes the BOS id (or EOS when there is none);
* BOS: lm-eval leaves `add_bos_token` unset by default, so whether BOS is
  added is the HF tokenizer's own `add_bos_token` (Llama-2's says yes; a
  LlamaTokenizer built from a bare tokenizer.model says no). `add_bos` here
  says it explicitly: match the tokenizer_config.json of the checkpoint;
* inputs longer than `max_len` lose tokens from the left: the model sees
  `(context_enc + continuation_enc)[-(max_len + 1):][:-1]`;
* `acc` is the argmax of the summed log-likelihoods, `acc_norm` of
  log-likelihood / len(choice) in characters (lm-eval's acc_norm counts
  characters, not bytes), `acc_bytes` of log-likelihood / UTF-8 bytes of the
  choice; the delimiter is counted in neither.

Requests are sorted by length and padded into [batch_size, bucket] arrays,
buckets being powers of two (at least 16, at most max_len), so a run compiles
one scoring function per bucket length.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from yijax.train import scoring
from yijax.models.config import ModelConfig
from yijax.errors import DataError, MissingFileError

MIN_BUCKET = 16

trace_counts = scoring.trace_counts  # compilations by kind ("multiple_choice"): scoring's own counter


class TaskFileError(DataError):
  """A multiple-choice JSONL line that cannot be used; names the file and line."""


class Request(NamedTuple):
  """One (example, choice) to score: the model input and the targets it is scored on."""

  example: int
  choice: int
  inputs: list[int]  # what the model sees, at most max_len tokens
  targets: list[int]  # inputs shifted by one; the last `continuation_len` are scored
  continuation_len: int
  truncated: bool


def _check_example(example: Any, where: str) -> dict:
  if not isinstance(example, dict):
    raise TaskFileError(
        f"{where}: expected a JSON object with context, choices, answer; got {type(example).__name__}")
  missing = [k for k in ("context", "choices", "answer") if k not in example]
  if missing:
    raise TaskFileError(f"{where}: missing field(s) {missing}; each line needs "
                        '{"context": str, "choices": [str, ...], "answer": int}')
  if not isinstance(example["context"], str):
    raise TaskFileError(f"{where}: 'context' must be a string, got {type(example['context']).__name__}")
  choices = example["choices"]
  if not isinstance(choices, list) or not choices:
    raise TaskFileError(f"{where}: 'choices' must be a non-empty list of strings, got {choices!r}")
  if not all(isinstance(c, str) for c in choices):
    raise TaskFileError(f"{where}: every entry of 'choices' must be a string, got {choices!r}")
  answer = example["answer"]
  if isinstance(answer, bool) or not isinstance(answer, int):
    raise TaskFileError(f"{where}: 'answer' must be an integer index into choices, got {answer!r}")
  if not 0 <= answer < len(choices):
    raise TaskFileError(f"{where}: 'answer'={answer} is out of range for {len(choices)} choices "
                        f"(use 0..{len(choices) - 1})")
  return example


def load_tasks(path: str) -> list[dict]:
  """Examples from a JSONL file: one {"context", "choices", "answer"[, "id"]} per line.

  Blank lines are skipped; a bad line is an error naming `path:line`.
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"multiple-choice task file {path} does not exist")
  examples = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        example = json.loads(line)
      except json.JSONDecodeError as error:
        raise TaskFileError(
            f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
      examples.append(_check_example(example, f"{path}:{number}"))
  if not examples:
    raise TaskFileError(f"{path} holds no examples")
  return examples


def encode_request(tokenizer, context: str, continuation: str, add_bos: bool) -> tuple[list[int], list[int]]:
  """(context_enc, continuation_enc) exactly as lm-eval's HF model builds them."""
  if context == "":
    prefix = tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.eos_id
    continuation_enc = tokenizer.encode(continuation)
    if continuation_enc and continuation_enc[0] == prefix:
      return continuation_enc[:1], continuation_enc[1:]
    return [prefix], continuation_enc
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  whole = tokenizer.encode(context + continuation, add_bos=add_bos)
  context_enc = tokenizer.encode(context, add_bos=add_bos)
  return context_enc, whole[len(context_enc):]


def bucket_length(length: int, max_len: int) -> int:
  size = MIN_BUCKET
  while size < length:
    size *= 2
  return min(size, max_len)


def build_requests(tokenizer, examples: Sequence[dict], add_bos: bool, delimiter: str,
                   max_len: int) -> list[Request]:
  """One Request per (example, choice), tokenized and left-truncated as lm-eval does."""
  requests = []
  for index, example in enumerate(examples):
    _check_example(example, f"example {index}")
    for choice_index, choice in enumerate(example["choices"]):
      context_enc, continuation_enc = encode_request(
          tokenizer, example["context"], delimiter + choice, add_bos)
      if not continuation_enc:
        raise DataError(f"example {index} (id {example.get('id', index)!r}) choice {choice_index} "
                         f"{choice!r} tokenizes to nothing after the context; give it text")
      if len(continuation_enc) > max_len:
        raise DataError(f"example {index} choice {choice_index} is {len(continuation_enc)} tokens, longer "
                         f"than max_len={max_len}; raise max_len (at most model.max_seq_len)")
      window = (context_enc + continuation_enc)[-(max_len + 1):]
      truncated = len(context_enc) + len(continuation_enc) > max_len + 1
      requests.append(Request(index, choice_index, window[:-1], window[1:], len(continuation_enc), truncated))
  return requests


def score_requests(config: ModelConfig, params: Any, requests: Sequence[Request], batch_size: int,
                   max_len: int, chunk_len: int = 512, scorer: scoring.Scorer | None = None
                   ) -> dict[tuple[int, int], tuple[float, bool]]:
  """{(example, choice): (log-likelihood, is_greedy)}, scored in [batch_size, bucket] batches."""
  scorer = scorer or scoring.Scorer(config, chunk_len=chunk_len)
  by_bucket: dict[int, list[Request]] = collections.defaultdict(list)
  for request in sorted(requests, key=lambda r: -len(r.inputs)):
    by_bucket[bucket_length(len(request.inputs), max_len)].append(request)
  results = {}
  for bucket, members in by_bucket.items():
    for start in range(0, len(members), batch_size):
      rows = members[start:start + batch_size]
      tokens = np.zeros((batch_size, bucket), np.int32)
      targets = np.zeros((batch_size, bucket), np.int32)
      score_mask = np.zeros((batch_size, bucket), bool)
      for row, request in enumerate(rows):
        length = len(request.inputs)
        tokens[row, :length] = request.inputs
        targets[row, :length] = request.targets
        score_mask[row, length - request.continuation_len:length] = True
      sums, greedy = scorer.continuation_sums(params, tokens, targets, score_mask)
      for row, request in enumerate(rows):
        results[request.example, request.choice] = (float(sums[row]), bool(greedy[row]))
  return results


def score_multiple_choice(config: ModelConfig, params: Any, tokenizer, examples: Sequence[dict],
                          batch_size: int = 8, max_len: int | None = None, add_bos: bool = False,
                          target_delimiter: str = " ", records_path: str | None = None,
                          chunk_len: int = 512, scorer: scoring.Scorer | None = None) -> dict[str, Any]:
  """acc / acc_norm / acc_bytes of `examples` (dicts as from `load_tasks`).

  add_bos: prefix BOS to every context (lm-eval's HF model does when the
  tokenizer's add_bos_token says so, or with model_args add_bos_token=True).
  target_delimiter: put between context and each choice (lm-eval's default " ").
  max_len: the model's context for truncation (default model.max_seq_len).
  scorer: a `scoring.Scorer` on the run's mesh (default: one on the parameters' device).
  Returns {"acc", "acc_norm", "acc_bytes", "n", "requests", "truncated",
  "compilations", "records"}; records (one per example, with each choice's
  log-likelihood) are also written as JSONL to `records_path` when given.
  """
  if not examples:
    raise DataError("no examples to score")
  if batch_size < 1:
    raise DataError(f"batch_size must be >= 1, got {batch_size}")
  max_len = config.max_seq_len if max_len is None else max_len
  if not 1 <= max_len <= config.max_seq_len:
    raise DataError(f"max_len={max_len} must be in [1, model.max_seq_len={config.max_seq_len}]")
  tokenizer.check_fits(config.vocab_size)
  requests = build_requests(tokenizer, examples, add_bos, target_delimiter, max_len)
  traces_before = trace_counts["multiple_choice"]
  scores = score_requests(config, params, requests, batch_size, max_len, chunk_len, scorer)
  token_counts = {(r.example, r.choice): r.continuation_len for r in requests}
  records, correct, correct_norm, correct_bytes = [], 0, 0, 0
  for index, example in enumerate(examples):
    choices = example["choices"]
    lls = np.array([scores[index, c][0] for c in range(len(choices))])
    with np.errstate(divide="ignore", invalid="ignore"):  # lm-eval divides by len("") too
      pred_norm = int(np.argmax(lls / np.array([float(len(c)) for c in choices])))
      pred_bytes = int(np.argmax(lls / np.array([float(len(c.encode("utf-8"))) for c in choices])))
    pred, answer = int(np.argmax(lls)), example["answer"]
    correct += pred == answer
    correct_norm += pred_norm == answer
    correct_bytes += pred_bytes == answer
    records.append({
        "id": example.get("id", index), "answer": answer, "pred": pred, "pred_norm": pred_norm,
        "pred_bytes": pred_bytes, "acc": float(pred == answer), "acc_norm": float(pred_norm == answer),
        "acc_bytes": float(pred_bytes == answer),
        "loglikelihoods": lls.tolist(), "is_greedy": [scores[index, c][1] for c in range(len(choices))],
        "continuation_tokens": [token_counts[index, c] for c in range(len(choices))],
    })
  if records_path:
    write_records(records_path, records)
  n = len(examples)
  return {"acc": correct / n, "acc_norm": correct_norm / n, "acc_bytes": correct_bytes / n, "n": n,
          "requests": len(requests), "truncated": sum(r.truncated for r in requests),
          "compilations": trace_counts["multiple_choice"] - traces_before, "records": records}


def write_records(path: str, records: Iterable[dict]) -> None:
  """Per-example records as JSONL (written to a temporary file, then renamed)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def training_evaluator(paths: Sequence[str], batch_size: int = 8, add_bos: bool = False):
  """A builder of the train loop's evaluator for eval.multiple_choice: context -> (params, step) -> metrics.

  Reports `mc/<task>/acc` and `mc/<task>/acc_norm` for each JSONL file, with the run's tokenizer, scored on
  the run's mesh (the context's scorer).
  """
  tasks = {os.path.splitext(os.path.basename(p))[0]: load_tasks(p) for p in paths}

  def build(context):
    max_len = min(context.model_config.max_seq_len, context.seq_len)

    def evaluate(params, step: int) -> dict:
      out = {}
      for name, examples in tasks.items():
        result = score_multiple_choice(context.model_config, params, context.tokenizer, examples,
                                       batch_size=batch_size, max_len=max_len, add_bos=add_bos,
                                       scorer=context.scorer)
        out[f"mc/{name}/acc"] = result["acc"]
        out[f"mc/{name}/acc_norm"] = result["acc_norm"]
      return out

    return evaluate

  return build
