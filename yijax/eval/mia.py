"""Membership inference with Min-K% Prob (Shi et al., 2024), and per-token scoring of chunks.

  yijax eval mia --ckpt=DIR --tokenizer=PATH --members=FILE --nonmembers=FILE
                 [--chunk_len=N --k=30,40,50,60,100 --out=FILE]

A sequence's Min-K% score is the mean of its lowest K% next-token
log-probabilities (max(1, int(n * K / 100)) of its n scored tokens; K = 100
is the mean log-likelihood). Members score higher. Over members (e.g. the
forget chunks) and as many non-members (e.g. chunks of the approximate set)
we report the ROC AUC, flipped to 1 - AUC when below 0.5 as Yao et al.'s code
does (0.5 = inseparable; `auc_raw` keeps the unflipped value), the best
balanced accuracy over thresholds, and the highest TPR at a threshold whose
FPR is below 5%. The metrics are numpy only.

JSONL inputs have a `text` field; each text is tokenized alone and cut into
consecutive chunks of `chunk_len` tokens, chunks under 5 tokens dropped
(yijax/data/chunked.py), as the unlearning data is.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from yijax.errors import DataError, MissingFileError
from yijax.train import scoring
from yijax.models.config import ModelConfig

DEFAULT_KS = (30, 40, 50, 60, 100)
FPR_LIMIT = 0.05


# ---------------------------------------------------------------- metrics (numpy)


def min_k_score(log_probs: np.ndarray, k_percent: float) -> float:
  """Mean of the lowest k% of a sequence's token log-probabilities (at least one token)."""
  log_probs = np.sort(np.asarray(log_probs, np.float64))
  if not 0 < k_percent <= 100:
    raise DataError(f"k={k_percent} must be a percentage in (0, 100]")
  if log_probs.size == 0:
    raise DataError("a sequence with no scored tokens has no Min-K% score")
  count = max(1, int(log_probs.size * k_percent / 100))
  return float(np.mean(log_probs[:count]))


def roc_points(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
  """(fpr, tpr) of "member when score >= t" at every distinct score t, from (0, 0) to (1, 1)."""
  members, others = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
  if members.size == 0 or others.size == 0:
    raise DataError(f"need members and non-members; got {members.size} and {others.size}")
  thresholds = np.unique(np.concatenate([members, others]))[::-1]
  tpr = np.searchsorted(np.sort(-members), -thresholds, side="right") / members.size
  fpr = np.searchsorted(np.sort(-others), -thresholds, side="right") / others.size
  return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def roc_metrics(member_scores, nonmember_scores) -> dict[str, float]:
  """AUC (flipped below 0.5), raw AUC, best balanced accuracy and TPR at FPR < 5%."""
  members, others = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
  fpr, tpr = roc_points(members, others)
  greater = (members[:, None] > others[None, :]).mean()
  ties = (members[:, None] == others[None, :]).mean()
  auc = float(greater + 0.5 * ties)  # = the trapezoidal area under (fpr, tpr)
  return {"auc": max(auc, 1.0 - auc), "auc_raw": auc,
          "balanced_accuracy": float(np.max(1.0 - (fpr + (1.0 - tpr)) / 2.0)),
          "tpr_at_5pct_fpr": float(np.max(tpr[fpr < FPR_LIMIT]))}


def min_k_metrics(member_log_probs: Sequence[np.ndarray], nonmember_log_probs: Sequence[np.ndarray],
                  ks: Sequence[float] = DEFAULT_KS) -> dict[str, dict[str, float]]:
  """{str(k): roc_metrics} of the Min-K% scores of two lists of per-sequence token log-probs."""
  out = {}
  for k in ks:
    members = [min_k_score(lp, k) for lp in member_log_probs]
    others = [min_k_score(lp, k) for lp in nonmember_log_probs]
    out[f"{k:g}"] = roc_metrics(members, others)
  return out


# ---------------------------------------------------------------- scoring chunks


def score_chunks(config: ModelConfig, params: Any, chunks: Sequence[np.ndarray], chunk_len: int,
                 batch_size: int = 8, seq_chunk: int = 512, scorer: scoring.Scorer | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
  """(log p of each next token [n-1], whether it was the argmax [n-1]) for each chunk, each scored alone.

  Chunks are right-padded rows of chunk_len; batches are padded with empty rows
  so every call has one shape (one compilation).
  """
  from yijax.data import chunked

  scorer = scorer or scoring.Scorer(config, chunk_len=seq_chunk)
  out = []
  for first in range(0, len(chunks), batch_size):
    part = list(chunks[first:first + batch_size])
    batch = chunked.pad_rows(part + [np.zeros(0, np.int32)] * (batch_size - len(part)), chunk_len)
    if batch["tokens"].max(initial=0) >= config.vocab_size:
      raise DataError(f"token ids reach {batch['tokens'].max()} but model.vocab_size={config.vocab_size}; "
                       "was the text tokenized with another tokenizer?")
    targets, mask = scoring.host_targets(batch["tokens"], batch["segment_ids"])
    log_probs, greedy = scorer.token_log_probs(params, batch["tokens"], targets, batch["positions"],
                                               batch["segment_ids"])
    for row in range(len(part)):
      keep = np.asarray(mask[row], bool)
      out.append((np.asarray(log_probs[row])[keep], np.asarray(greedy[row])[keep]))
  return out


# ---------------------------------------------------------------- yijax eval mia


def read_texts(path: str, field: str = "text") -> list[str]:
  """The `field` of every JSONL line of `path` (blank lines skipped)."""
  if not os.path.isfile(path):
    raise MissingFileError(f"{path} does not exist (a JSONL file with a {field!r} field per line)")
  texts = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise DataError(f"{path}:{number} has no string {field!r} field")
      texts.append(record[field])
  return texts


def text_chunks(texts: Sequence[str], tokenizer, chunk_len: int, add_bos: bool = False,
                add_eos: bool = False) -> list[np.ndarray]:
  """Each text tokenized alone and cut into chunks (the unlearning data's rule)."""
  from yijax.data import chunked

  out = []
  for text in texts:
    out.extend(chunked.document_chunks(tokenizer.encode(text, add_bos=add_bos, add_eos=add_eos), chunk_len))
  return out


def membership_inference(config: ModelConfig, params, members: Sequence[np.ndarray],
                         nonmembers: Sequence[np.ndarray], chunk_len: int, ks: Sequence[float] = DEFAULT_KS,
                         batch_size: int = 8) -> dict:
  """Min-K% metrics of members vs as many non-members (both truncated to the shorter list)."""
  count = min(len(members), len(nonmembers))
  if count == 0:
    raise DataError(f"membership inference needs chunks on both sides; got {len(members)} members and "
                     f"{len(nonmembers)} non-members")
  member_scores = [lp for lp, _ in score_chunks(config, params, members[:count], chunk_len, batch_size)]
  other_scores = [lp for lp, _ in score_chunks(config, params, nonmembers[:count], chunk_len, batch_size)]
  metrics = min_k_metrics(member_scores, other_scores, ks)
  return {"members": count, "nonmembers": count, "chunk_len": chunk_len,
          "auc": {k: m["auc"] for k, m in metrics.items()}, "min_k": metrics}


def define_mia_flags(fv) -> None:
  from absl import flags

  flags.DEFINE_string("ckpt", None, "model dir, checkpoint step dir or run dir", flag_values=fv)
  flags.DEFINE_string("tokenizer", None, "sentencepiece model (default: the checkpoint's)", flag_values=fv)
  flags.DEFINE_string("members", None, "JSONL of member texts (`text` field), e.g. the forget set", flag_values=fv)
  flags.DEFINE_string("nonmembers", None, "JSONL of non-member texts, e.g. the approximate set", flag_values=fv)
  flags.DEFINE_integer("chunk_len", 0, "tokens per chunk (0 = min(4096, model.max_seq_len))", flag_values=fv)
  flags.DEFINE_list("k", [str(k) for k in DEFAULT_KS], "Min-K% percentages", flag_values=fv)
  flags.DEFINE_boolean("add_bos", False, "prefix each text with the tokenizer's bos", flag_values=fv)
  flags.DEFINE_integer("batch_size", 8, "chunks per forward pass", flag_values=fv)
  flags.DEFINE_string("out", None, "also write the JSON result here", flag_values=fv)


def run_mia(fv) -> int:
  """`yijax eval mia`: prints (and with --out writes) the Min-K% metrics as one JSON object."""
  from yijax.data.tokenizer import Tokenizer
  from yijax.train import params_io

  for name in ("ckpt", "members", "nonmembers"):
    if not getattr(fv, name):
      raise DataError(f"--{name} is required: yijax eval mia --ckpt=DIR --tokenizer=PATH --members=FILE "
                       "--nonmembers=FILE")
  try:
    ks = [float(k) for k in fv.k]
  except ValueError:
    raise DataError(f"--k={','.join(fv.k)} must be numbers, e.g. --k=30,40,50,60,100") from None
  location = params_io.locate_model(fv.ckpt)
  tokenizer_path = fv.tokenizer or location.tokenizer
  if not tokenizer_path:
    raise DataError(f"{fv.ckpt} holds no tokenizer.model; pass --tokenizer=PATH")
  config, params = params_io.load_model(fv.ckpt)
  chunk_len = fv.chunk_len or min(4096, config.max_seq_len)
  if chunk_len > config.max_seq_len:
    raise DataError(f"--chunk_len={chunk_len} exceeds the model's max_seq_len={config.max_seq_len}")
  tokenizer = Tokenizer(tokenizer_path)
  members = text_chunks(read_texts(fv.members), tokenizer, chunk_len, fv.add_bos)
  nonmembers = text_chunks(read_texts(fv.nonmembers), tokenizer, chunk_len, fv.add_bos)
  result = {"ckpt": os.path.abspath(fv.ckpt), "members_file": fv.members, "nonmembers_file": fv.nonmembers,
            **membership_inference(config, params, members, nonmembers, chunk_len, ks, fv.batch_size)}
  text = json.dumps(result, indent=2)
  print(text)
  if fv.out:
    with open(fv.out, "w") as f:
      f.write(text + "\n")
  return 0
