"""The unlearning study's document sets, from the embedded corpus or from JSONL paths.

Embedded (the paper's GitHub setting in miniature): the code domain is the
interpreter's own modules (`python_code`), prose is its documentation topics
(`python_docs`). Documents are ordered by sha256 of their id (both corpus
splits: the study makes its own) and dealt out by byte budgets:

  forget          code modules in pretraining, to be unlearned
  approximate     code modules never in pretraining (the stand-in for a retrained model)
  retain          other code modules in pretraining (descent / KL data, in-distribution)
  retain_eval     more code modules in pretraining, never trained on by any method (evaluation)
  other_code      the rest of the pretraining code
  general_retain  prose topics in pretraining (descent / KL data, general)
  general_eval    prose topics never in pretraining (evaluation)
  other_prose     the rest of the pretraining prose

pretrain = forget + retain + retain_eval + other_code + general_retain + other_prose;
retrain = pretrain without forget (the gold baseline).
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping

from yijax import paths
from yijax.data import corpus
from yijax.errors import DataError

CODE_SETS = ("forget", "approximate", "retain", "retain_eval", "other_code")
PROSE_SETS = ("general_eval", "general_retain", "other_prose")
EVAL_SETS = ("forget", "approximate", "retain_eval", "general_eval")
PAPER_SETS = ("forget", "approximate", "retain", "general_retain", "general_eval")


def _ordered(source: str, min_bytes: int, max_bytes: int) -> list[tuple[str, str]]:
  docs = []
  for doc_id in corpus.document_ids(source):
    text = corpus.read_text(source, doc_id)
    size = len(text.encode("utf-8"))
    if min_bytes <= size <= max_bytes:
      docs.append((hashlib.sha256(doc_id.encode()).hexdigest(), doc_id, text))
  return [(doc_id, text) for _, doc_id, text in sorted(docs)]


def _deal(docs: list[tuple[str, str]], budgets: Mapping[str, int], source: str) -> dict[str, list]:
  """Consecutive documents into each set until its byte budget is reached."""
  out, index = {}, 0
  for name, budget in budgets.items():
    out[name], size = [], 0
    while size < budget:
      if index >= len(docs):
        raise DataError(f"the embedded {source} documents run out while filling {name!r} "
                         f"({size} of {budget} bytes); lower the byte budgets")
      out[name].append(docs[index])
      size += len(docs[index][1].encode("utf-8"))
      index += 1
  return out


def embedded_sets(budgets: Mapping[str, int], code_doc_bytes=(1000, 20000),
                  prose_doc_bytes=(500, 40000)) -> dict[str, list[tuple[str, str]]]:
  """{set: [(doc_id, text)]} for CODE_SETS + PROSE_SETS (+ pretrain, retrain), each filled to
  budgets[set] bytes with documents whose size lies in the given (min, max) bytes."""
  missing = [name for name in CODE_SETS + PROSE_SETS if name not in budgets]
  if missing:
    raise DataError(f"byte budgets are missing for {missing}")
  code = _deal(_ordered("python_code", *code_doc_bytes), {n: budgets[n] for n in CODE_SETS}, "python_code")
  prose = _deal(_ordered("python_docs", *prose_doc_bytes), {n: budgets[n] for n in PROSE_SETS}, "python_docs")
  sets = {**code, **prose}
  pretrain_sets = ("forget", "retain", "retain_eval", "other_code", "general_retain", "other_prose")
  sets["pretrain"] = [doc for name in pretrain_sets for doc in sets[name]]
  sets["retrain"] = [doc for name in pretrain_sets if name != "forget" for doc in sets[name]]
  return sets


def embedded_prose(budgets: Mapping[str, int], doc_bytes=(500, 40000)) -> dict[str, list[tuple[str, str]]]:
  """PROSE_SETS of the embedded prose (Python documentation topics) alone, filled to their byte budgets."""
  missing = [name for name in PROSE_SETS if name not in budgets]
  if missing:
    raise DataError(f"byte budgets are missing for {missing}")
  return _deal(_ordered("python_docs", *doc_bytes), {n: budgets[n] for n in PROSE_SETS}, "python_docs")


def write_jsonl(sets: Mapping[str, list[tuple[str, str]]], out_dir: str) -> dict[str, str]:
  """OUT/<set>.jsonl ({"id", "text"} per line) for every set (OUT local or gs://); returns {set: path}."""
  paths.makedirs(out_dir)
  written = {}
  for name, docs in sets.items():
    path = paths.join(out_dir, f"{name}.jsonl")
    paths.write_text(path, "".join(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n"
                                   for doc_id, text in docs))
    written[name] = path
  return written
