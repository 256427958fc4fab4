"""Text helpers of the curation rules: a dependency-free word tokenizer for datatrove, normalization, hashed
words, garbled-text and coherence measures."""

from __future__ import annotations

import re
import unicodedata
import zlib

import numpy as np
from datatrove.utils.word_tokenizers import WordTokenizer

# a CJK ideograph or kana is a word on its own; elsewhere a run of letters/digits, or one other symbol
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+(?:['’][^\W_]+)*|[^\w\s]")
_SENTENCE = re.compile(r"[^.!?。！？\n]*(?:[.!?。！？]+[\"'”’)]*|\n|$)")
_MOJIBAKE = re.compile(r"Ã[\x80-\xbf]|â€|Â[\x80-\xbf ]|ï¿½")
_SPACE = re.compile(r"\s+")


class RegexWordTokenizer(WordTokenizer):
  """Words by a Unicode regex (CJK characters one by one): datatrove's rules without spaCy or NLTK data."""

  def __init__(self):
    super().__init__("regex")

  def word_tokenize(self, text: str) -> list[str]:
    return _WORD.findall(text)

  def sent_tokenize(self, text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]

  def span_tokenize(self, text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _SENTENCE.finditer(text) if m.group().strip()]

  def __hash__(self):  # datatrove caches tokenizers by argument: every instance is the same tokenizer
    return hash(RegexWordTokenizer)

  def __eq__(self, other):
    return isinstance(other, RegexWordTokenizer)


TOKENIZER = RegexWordTokenizer()


def words(text: str) -> list[str]:
  return _WORD.findall(text)


def normalize(text: str) -> str:
  """NFKC, lower case, whitespace collapsed: the key of exact deduplication."""
  return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def hashed_words(text: str, buckets: int) -> np.ndarray:
  """Lower-cased words as ids in [0, buckets) (crc32), for the n-gram scorer and the embeddings."""
  return np.array([zlib.crc32(w.lower().encode("utf-8")) % buckets for w in words(text)], np.int64)


def garbled_ratio(text: str) -> float:
  """Fraction of characters that are U+FFFD, control (not whitespace), private-use or mojibake sequences."""
  if not text:
    return 0.0
  bad = sum(1 for ch in text if ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Co", "Cs") and ch not in "\t\n\r\f"))
  bad += 2 * len(_MOJIBAKE.findall(text))
  return bad / len(text)


def _bag(words_: list[str], dim: int = 1 << 12) -> np.ndarray:
  """Hashed counts of the content words (4+ characters, or CJK), so shared function words do not count."""
  vector = np.zeros(dim, np.float32)
  for w in words_:
    if len(w) >= 4 or "\u3400" <= w[0] <= "\u9fff":
      vector[zlib.crc32(w.lower().encode("utf-8")) % dim] += 1.0
  return vector


def coherence(text: str, min_words: int = 20) -> float | None:
  """Mean cosine of adjacent chunks' word counts (paragraphs, else groups of ~min_words words).

  Text stitched from unrelated pieces scores low. None for a document too short to have two chunks.
  """
  chunks = [words(p) for p in re.split(r"\n\s*\n", text) if p.strip()]
  chunks = [c for c in chunks if c]
  if len(chunks) < 2 or any(len(c) < min_words // 2 for c in chunks[:2]):
    flat = words(text)
    chunks = [flat[i:i + min_words] for i in range(0, len(flat), min_words)]
    chunks = [c for c in chunks if len(c) >= min_words // 2]
  if len(chunks) < 2:
    return None
  vectors = np.stack([_bag(c) for c in chunks])
  vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
  return float(np.mean(np.sum(vectors[1:] * vectors[:-1], axis=1)))
