"""Evaluation over a run's checkpoints (or a directory of converted released checkpoints).

  yijax eval --run_dir=DIR --tasks=arith,facts,bpb_code [--steps=100,200]

Every kept checkpoint is evaluated on every task; each (checkpoint, task,
metric) becomes one JSON line of DIR/eval/checkpoints.jsonl with the step,
tokens seen and training FLOPs so far. Killed and rerun, it neither repeats
nor skips a pair: a (checkpoint, task) counts as done when all of its lines
are there (each line records how many its task wrote), and a torn last line
is dropped.

The pseudo-task `layer_cosine` records, per checkpoint, each layer's mean
cosine between its input and output hidden states (`layer/<i>`) and the
model-level value (`model_level`; see yijax.analysis.layer_cosine), on the
first tokens of the embedded corpus's held-out documents (or the texts in
options["layer_cosine_texts"]), so its trend over training can be plotted.

A directory of converted Hugging Face checkpoints (`yijax convert` outputs,
e.g. the intermediate checkpoints a paper released) works the same way; the
checkpoints are ordered by tokens seen, read from each one's meta.json
(`tokens_seen`) or from its name (`tokens-4.2B`, `4200B_tokens`, `step-1000`).
"""

from __future__ import annotations

import logging
import dataclasses
import json
import os
import re
from typing import Sequence

from yijax import paths
from yijax.train import flops, params_io

log = logging.getLogger(__name__)

RESULTS = "eval/checkpoints.jsonl"
LAYER_COSINE = "layer_cosine"
COSINE_OPTIONS = ("layer_cosine_texts", "layer_cosine_docs", "layer_cosine_tokens")
UNITS = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  name: str          # the key in the results (step number or directory name)
  path: str          # a model dir / checkpoint step dir
  step: int | None
  tokens_seen: float | None
  flops: float | None


def _tokens_from_name(name: str) -> float | None:
  for pattern in (r"tokens?[-_]?(\d+(?:\.\d+)?)([KMBGT]?)", r"(\d+(?:\.\d+)?)([KMBGT]?)[-_]?tokens?"):
    match = re.search(pattern, name, flags=re.IGNORECASE)
    if match:
      return float(match.group(1)) * UNITS[match.group(2).upper()]
  return None


def _step_from_name(name: str) -> int | None:
  match = re.search(r"(?:step|iter|ckpt)[-_]?(\d+)", name, flags=re.IGNORECASE) or re.fullmatch(r"(\d+)", name)
  return int(match.group(1)) if match else None


def list_checkpoints(path: str) -> list[CheckpointInfo]:
  """A run dir's kept checkpoints, or a directory of model dirs, in training order (local or gs://)."""
  path = paths.resolve(path, "--run_dir")
  run_checkpoints = paths.join(path, "checkpoints")
  if paths.isdir(run_checkpoints):
    config = paths.read_json(paths.join(path, "config.json"), "the run config")
    out = []
    for step in params_io.complete_steps(run_checkpoints):  # committed steps only (GCS: commit markers)
      step_dir = paths.join(run_checkpoints, str(step))
      meta_path = paths.join(step_dir, "meta", "metadata")
      meta = paths.read_json(meta_path, "checkpoint metadata") if paths.exists(meta_path) else {}
      model = params_io.read_model_config(step_dir)
      per_token = flops.train_flops_per_token(model, config["train"]["seq_len"])
      tokens = meta.get("tokens_seen")
      out.append(CheckpointInfo(str(step), step_dir, step, tokens, None if tokens is None else tokens * per_token))
    return out
  out = []
  for name in sorted(p.name for p in paths.path(path).iterdir()):
    model_dir = paths.join(path, name)
    if not paths.isdir(model_dir):
      continue
    try:
      params_io.locate_model(model_dir)
    except params_io.CheckpointError:
      continue
    meta_path = paths.join(model_dir, "meta.json")
    meta = paths.read_json(meta_path, "checkpoint meta.json") if paths.exists(meta_path) else {}
    tokens = meta.get("tokens_seen", _tokens_from_name(name))
    step = meta.get("step", _step_from_name(name))
    flop = meta.get("flops")
    if flop is None and tokens is not None:
      flop = tokens * flops.train_flops_per_token(params_io.read_model_config(model_dir), meta.get("seq_len", 4096))
    out.append(CheckpointInfo(name, model_dir, step, tokens, flop))
  if not out:
    raise params_io.CheckpointError(f"{path} holds no checkpoints (a run dir or a directory of yijax model dirs)")
  unordered = [c.name for c in out if c.tokens_seen is None and c.step is None]
  if unordered:
    raise params_io.CheckpointError(
        f"cannot order {unordered[:3]} by training progress: give each a meta.json with tokens_seen "
        "(or step), or a name like tokens-4.2B / step-1000")
  return sorted(out, key=lambda c: (c.tokens_seen if c.tokens_seen is not None else c.step, c.name))


def read_done(results_path: str) -> set[tuple[str, str]]:
  """(checkpoint, task) pairs whose lines are all present. The lines of a pair cut short by a kill (a torn
  last line, a block missing metrics) are dropped from the file, so the rerun writes that pair once, whole."""
  if not paths.exists(results_path):
    return set()
  lines, counts, expected = [], {}, {}
  for line in paths.read_text(results_path).splitlines(keepends=True):
    try:
      record = json.loads(line)
    except ValueError:
      continue  # a write cut short by a kill
    key = (record["checkpoint"], record["task"])
    lines.append((key, line if line.endswith("\n") else line + "\n"))
    counts[key] = counts.get(key, 0) + 1
    expected[key] = record["n_metrics"]
  done = {key for key, n in counts.items() if n == expected[key]}
  paths.write_text(results_path, "".join(line for key, line in lines if key in done))
  return done


def _append(results_path: str, block: str) -> None:
  """Adds one (checkpoint, task) block of lines: appended and synced locally; on GCS, which has no append,
  the whole (small) file is written again as one object."""
  if paths.is_url(results_path):
    before = paths.read_text(results_path) if paths.exists(results_path) else ""
    paths.write_text(results_path, before + block)
    return
  with open(results_path, "a") as f:
    f.write(block)
    f.flush()
    os.fsync(f.fileno())


def evaluate_checkpoints(path: str, tasks: Sequence[str], out_path: str | None = None,
                         steps: Sequence[int] | None = None, seed: int = 0, tokenizer_path: str | None = None,
                         options: dict | None = None, mesh=None, rules=None) -> str:
  """Evaluates every (checkpoint, task) not yet in the results file; returns its path. mesh: restore each
  checkpoint sharded on it and score there (default: one device)."""
  from yijax.train import scoring
  from yijax.data.tokenizer import Tokenizer

  options = dict(options or {})
  cosine_options = {k: options.pop(k) for k in COSINE_OPTIONS if k in options}
  checkpoints = list_checkpoints(path)
  if steps:
    checkpoints = [c for c in checkpoints if c.step in set(steps)]
  path = paths.resolve(path, "--run_dir")
  out_path = paths.resolve(out_path, "--output") if out_path else paths.join(path, RESULTS)
  paths.makedirs(paths.parent(out_path))
  done = read_done(out_path)
  for info in checkpoints:
    pending = [t for t in tasks if (info.name, t) not in done]
    if not pending:
      continue
    location = params_io.locate_model(info.path)
    tok_path = tokenizer_path or location.tokenizer or _run_tokenizer(path)
    if tok_path is None:
      raise params_io.CheckpointError(f"{info.path}: no tokenizer.model; pass --tokenizer")
    tokenizer = Tokenizer(tok_path)
    config, params = params_io.load_model(info.path, mesh=mesh, rules=rules)
    config = config.replace(remat_policy="none")
    scorer = scoring.Scorer(config, mesh, rules)
    for task in pending:
      if task == LAYER_COSINE:
        metrics = layer_cosine_metrics(config, params, tokenizer, **cosine_options)
      else:
        from yijax.eval import tasks as task_lib

        metrics = task_lib.evaluate_tasks(config, params, tokenizer, [task], seed=seed, scorer=scorer,
                                          **options)[task]
      base = {"checkpoint": info.name, "step": info.step, "tokens_seen": info.tokens_seen, "flops": info.flops,
              "task": task, "n_metrics": len(metrics)}
      block = "".join(json.dumps({**base, "metric": k, "value": float(v)}) + "\n" for k, v in metrics.items())
      _append(out_path, block)
      log.info(f"[eval] {info.name} {task}: " + ", ".join(f"{k}={float(v):.4f}" for k, v in metrics.items()))
  return out_path


def layer_cosine_metrics(config, params, tokenizer, layer_cosine_texts=None, layer_cosine_docs: int = 8,
                         layer_cosine_tokens: int = 256) -> dict[str, float]:
  """{"layer/<i>": cosine, "model_level": mean of the inner layers} on fixed held-out text:
  the given texts, or the first `layer_cosine_docs` held-out documents of the embedded corpus."""
  import numpy as np

  from yijax.analysis import layer_cosine

  texts = list(layer_cosine_texts or _held_out_texts(layer_cosine_docs))
  length = min(layer_cosine_tokens, config.max_seq_len)
  rows = [tokenizer.encode(t, add_bos=True)[:length] for t in texts]
  tokens = np.zeros((len(rows), length), np.int32)
  segments = np.zeros_like(tokens)
  for i, row in enumerate(rows):
    tokens[i, :len(row)], segments[i, :len(row)] = row, 1
  result = layer_cosine.layer_cosine(config, params, tokens, segment_ids=segments)
  metrics = {f"layer/{i}": v for i, v in enumerate(result["per_layer"])}
  if result["model_level"] is not None:
    metrics["model_level"] = result["model_level"]
  return metrics


def _held_out_texts(count: int) -> list[str]:
  """The first `count` held-out documents of the embedded corpus, alternating docs and code."""
  from yijax.data import corpus

  streams = [corpus.documents(source, "validation") for source in corpus.SOURCES]
  texts: list[str] = []
  while len(texts) < count and streams:
    for stream in list(streams):
      item = next(stream, None)
      if item is None:
        streams.remove(stream)
      elif len(texts) < count:
        texts.append(item[1])
  return texts


def _run_tokenizer(path: str) -> str | None:
  candidate = paths.join(path, params_io.TOKENIZER)
  return candidate if paths.exists(candidate) else None


def load_results(results_path: str) -> list[dict]:
  return [json.loads(line) for line in paths.read_text(results_path).splitlines() if line.strip()]
