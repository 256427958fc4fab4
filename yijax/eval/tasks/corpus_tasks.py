"""Battery tasks built from the embedded corpus's held-out `validation` split.

bpb_docs / bpb_code: bits per byte on held-out text of one source. The
validation documents are cut at line boundaries into pieces of at most
`piece_bytes`, ordered by sha256(seed, document, piece) and taken until
`bpb_max_bytes` (0 = every piece, which makes the seed irrelevant). On
CPython 3.11 python_docs holds 8 KB of held-out text (all of it is scored)
and python_code 0.79 MB (the default 128 KiB is a seeded sample).

cloze_docs / cloze_code: the true next line among `num_choices` lines of the
same held-out source (trailing whitespace stripped). Context = the
`context_lines` lines before a held-out line; distractors = distinct lines of the same source's held-out documents
whose length is within 20% (widened if too few qualify) and which do not
appear in that context. Choices are whole lines (indentation included) scored
after the context's newline (target delimiter ""), so chance is 1/4.

Neither reads the train split, which the default pretraining mixture reads
(the split is `yijax.data.corpus.split_of`, a hash of the document id).
"""

from __future__ import annotations

import bisect
import hashlib

from yijax.data import corpus
from yijax.errors import ConfigError
from yijax.eval.tasks.base import Task, place_answer, rng_for

SOURCE_OF = {"docs": "python_docs", "code": "python_code"}
PIECE_BYTES = 8192


def _validation_documents(source: str) -> list[tuple[str, str]]:
  return list(corpus.documents(source, "validation"))


def _pieces(text: str, piece_bytes: int) -> list[str]:
  """The text cut at line ends into pieces of at most piece_bytes UTF-8 bytes (a longer line stays whole)."""
  pieces, current, size = [], [], 0
  for line in text.splitlines(keepends=True):
    length = len(line.encode("utf-8"))
    if current and size + length > piece_bytes:
      pieces.append("".join(current))
      current, size = [], 0
    current.append(line)
    size += length
  if current:
    pieces.append("".join(current))
  return [p for p in pieces if p.strip()]


def build_bpb(name: str, seed: int, bpb_max_bytes: int = 1 << 17, piece_bytes: int = PIECE_BYTES) -> Task:
  """Held-out text of one source for bits per byte; data = [{"doc", "piece", "text"}]."""
  source = SOURCE_OF[name.split("_", 1)[1]]
  if bpb_max_bytes < 0:
    raise ConfigError(f"bpb_max_bytes={bpb_max_bytes} must be >= 0 (0 = the whole held-out split)")
  if piece_bytes <= 0:
    raise ConfigError(f"piece_bytes={piece_bytes} must be positive")
  keyed = []
  for doc_id, text in _validation_documents(source):
    for index, piece in enumerate(_pieces(text, piece_bytes)):
      key = hashlib.sha256(f"{int(seed)}:{doc_id}:{index}".encode()).hexdigest()
      keyed.append((key, {"doc": doc_id, "piece": index, "text": piece}))
  data, total = [], 0
  for _, piece in sorted(keyed, key=lambda pair: pair[0]):
    size = len(piece["text"].encode("utf-8"))
    if bpb_max_bytes and data and total + size > bpb_max_bytes:
      continue
    data.append(piece)
    total += size
    if bpb_max_bytes and total >= bpb_max_bytes:
      break
  if not data:
    raise ConfigError(f"{name}: the held-out split of {source} is empty on this interpreter; "
                     "use another task or a larger corpus.VALIDATION_FRACTION")
  return Task(name, "bpb", data=data,
              description=f"bits per byte on {total} bytes of held-out {source} ({len(data)} pieces)")


def _line_ok(line: str, min_chars: int, max_chars: int) -> bool:
  return len(line.strip()) >= min_chars and len(line) <= max_chars


class _LinePool:
  """Distinct candidate lines of a source, sorted by length, for length-matched distractors."""

  def __init__(self, lines: set[str]):
    self.lines = sorted(lines, key=lambda line: (len(line), line))
    self.lengths = [len(line) for line in self.lines]

  def near(self, length: int, tolerance: int) -> list[str]:
    lo = bisect.bisect_left(self.lengths, length - tolerance)
    hi = bisect.bisect_right(self.lengths, length + tolerance)
    return self.lines[lo:hi]

  def distractors(self, rng, answer: str, banned: set[str], count: int) -> list[str]:
    tolerance = max(2, len(answer) // 5)
    while True:
      eligible = [line for line in self.near(len(answer), tolerance) if line not in banned]
      if len(eligible) >= count or tolerance > max(self.lengths[-1], len(answer)):
        break
      tolerance *= 2
    if len(eligible) < count:
      raise ConfigError(f"only {len(eligible)} distinct candidate lines for distractors; lower num_choices")
    return rng.sample(eligible, count)


def build_cloze(name: str, seed: int, num_items: int = 200, context_lines: int = 8, num_choices: int = 4,
                min_chars: int = 12, max_chars: int = 100) -> Task:
  """Next-line multiple choice on held-out lines; items carry the document id and line number."""
  source = SOURCE_OF[name.split("_", 1)[1]]
  for field, value, low in (("num_items", num_items, 1), ("context_lines", context_lines, 1),
                            ("num_choices", num_choices, 2)):
    if value < low:
      raise ConfigError(f"{field}={value} must be >= {low}")
  documents = [(doc_id, [line.rstrip() for line in text.split("\n")])
               for doc_id, text in _validation_documents(source)]
  positions = [(d, i) for d, (_, lines) in enumerate(documents) for i in range(context_lines, len(lines))
               if _line_ok(lines[i], min_chars, max_chars)]
  if not positions:
    raise ConfigError(f"{name}: no held-out line of {source} has {context_lines} lines before it; "
                     "lower context_lines")
  pool = _LinePool({line for _, lines in documents for line in lines if _line_ok(line, min_chars, max_chars)})
  rng = rng_for(name, seed)
  items = []
  for d, i in rng.sample(positions, min(num_items, len(positions))):
    doc_id, lines = documents[d]
    window = lines[i - context_lines:i]
    answer = lines[i]
    distractors = pool.distractors(rng, answer, set(window) | {answer}, num_choices - 1)
    choices, position = place_answer(rng, answer, distractors)
    items.append({"id": f"{name}/{doc_id}:{i + 1}", "doc": doc_id, "line": i + 1,
                  "context": "\n".join(window) + "\n", "choices": choices, "answer": position})
  return Task(name, "multiple_choice", items=items, target_delimiter="",
              description=f"next line of held-out {source} among {num_choices} same-length lines")
