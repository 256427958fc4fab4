"""The filtering stages as datatrove steps: heuristic rules, language identification and the learned scorers.

The Gopher quality, Gopher repetition and FineWeb line rules are datatrove's own filters (run with
yijax.curate.text's regex tokenizer, so no spaCy or NLTK data is needed); length, blocklists and garbled
text are small filters here. Each filter writes what it removes, with the rule's reason, to
DIR/removed/<stage>/<rule>.<rank>.jsonl. The learned filters record their score on every document they see
(metadata `scores`), so the report can draw the histograms with the thresholds.
"""

from __future__ import annotations

import math
import re

from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter

from yijax.curate import scorers, text as text_lib

_URL = re.compile(r"https?://([^/\s:?#]+)", re.I)


class LengthFilter(BaseFilter):
  name = "document length"

  def __init__(self, min_chars, max_chars, exclusion_writer=None):
    super().__init__(exclusion_writer)
    self.min_chars, self.max_chars = min_chars, max_chars

  def filter(self, doc):
    if self.min_chars is not None and len(doc.text) < self.min_chars:
      return False, "too_short"
    if self.max_chars is not None and len(doc.text) > self.max_chars:
      return False, "too_long"
    return True


class GarbledFilter(BaseFilter):
  name = "garbled text"

  def __init__(self, max_ratio, exclusion_writer=None):
    super().__init__(exclusion_writer)
    self.max_ratio = max_ratio

  def filter(self, doc):
    return text_lib.garbled_ratio(doc.text) <= self.max_ratio or (False, "garbled")


def _read_list(path: str) -> list[str]:
  with open(path, encoding="utf-8", errors="replace") as f:
    return [line.strip().lower() for line in f if line.strip() and not line.startswith("#")]


class BlocklistFilter(BaseFilter):
  """Documents whose `url` (or a link in the text) is on a blocked domain, or with too many blocked words."""

  name = "blocklists"

  def __init__(self, url_file: str, word_file: str, max_words: int, exclusion_writer=None):
    super().__init__(exclusion_writer)
    self.domains = set(_read_list(url_file)) if url_file else set()
    entries = _read_list(word_file) if word_file else []
    self.words = {w for w in entries if " " not in w}
    self.phrases = [p for p in entries if " " in p]
    self.max_words = max_words

  def _blocked_domain(self, host: str) -> bool:
    parts = host.lower().split(".")
    return any(".".join(parts[i:]) in self.domains for i in range(len(parts)))

  def filter(self, doc):
    if self.domains:
      hosts = _URL.findall(str(doc.metadata.get("url", ""))) + _URL.findall(doc.text)
      if any(self._blocked_domain(h) for h in hosts):
        return False, "blocked_url"
    if self.words or self.phrases:
      lowered = doc.text.lower()
      found = {w.lower() for w in text_lib.words(doc.text)} & self.words
      found |= {p for p in self.phrases if p in lowered}
      if len(found) > self.max_words:
        return False, "blocked_words"
    return True


class LanguageFilter(BaseFilter):
  """fastText language identification (lid.176): keeps the configured languages above a score."""

  name = "language id"

  def __init__(self, model_path: str, languages, min_score: float, exclusion_writer=None):
    super().__init__(exclusion_writer)
    self.model_path, self.languages, self.min_score = model_path, set(languages), min_score
    self._model = None

  def filter(self, doc):
    if self._model is None:
      self._model = scorers.load_fasttext(self.model_path)
    scores = scorers.fasttext_scores(self._model, doc.text, k=1)
    language, score = next(iter(scores.items()), ("unknown", 0.0))
    doc.metadata["language"], doc.metadata["language_score"] = language, round(score, 4)
    if language not in self.languages:
      return False, f"language:{language}"
    return score >= self.min_score or (False, "language_score")


class ScoreFilter(BaseFilter):
  """A learned scorer with a threshold: removes documents below `min_score` (or above `max_score`)."""

  name = "learned scorer"

  def __init__(self, scorer: str, spec: dict, exclusion_writer=None):
    super().__init__(exclusion_writer)
    self.scorer, self.spec = scorer, spec
    self._model = None

  def score(self, text: str) -> float | None:
    if self._model is None:
      self._model = scorers.load(self.scorer, self.spec)
    return scorers.score(self.scorer, self._model, self.spec, text)

  def filter(self, doc):
    value = self.score(doc.text)
    doc.metadata.setdefault("scores", {})[self.scorer] = None if value is None else round(value, 5)
    if value is None or (isinstance(value, float) and math.isnan(value)):
      return True  # too short to score (coherence of a one-chunk document): not evidence against it
    low, high = self.spec.get("min_score"), self.spec.get("max_score")
    if (low is not None and value < low) or (high is not None and value > high):
      return False, f"{self.scorer}_threshold"
    return True


def heuristic_filters(config, writer) -> list:
  """The heuristic rules in order; writer(rule) -> the exclusion writer of that rule."""
  h = config.heuristics
  if not h.enabled:
    return []
  steps = [LengthFilter(h.min_chars, h.max_chars, writer("length"))]
  if h.max_garbled_ratio is not None:  # before the word rules, so garbled text is removed under its own reason
    steps.append(GarbledFilter(h.max_garbled_ratio, writer("garbled")))
  if h.gopher.enabled:
    g = h.gopher
    steps.append(GopherQualityFilter(
        min_doc_words=g.min_doc_words, max_doc_words=g.max_doc_words, min_avg_word_length=g.min_avg_word_length,
        max_avg_word_length=g.max_avg_word_length, max_symbol_word_ratio=g.max_symbol_word_ratio,
        max_bullet_lines_ratio=g.max_bullet_lines_ratio, max_ellipsis_lines_ratio=g.max_ellipsis_lines_ratio,
        max_non_alpha_words_ratio=g.max_non_alpha_words_ratio, min_stop_words=g.min_stop_words,
        exclusion_writer=writer("gopher_quality"), language=text_lib.TOKENIZER))
  if h.repetition.enabled:
    r = h.repetition
    steps.append(GopherRepetitionFilter(
        dup_line_frac=r.dup_line_frac, dup_para_frac=r.dup_para_frac, dup_line_char_frac=r.dup_line_char_frac,
        dup_para_char_frac=r.dup_para_char_frac, top_n_grams=tuple(map(tuple, r.top_n_grams)),
        dup_n_grams=tuple(map(tuple, r.dup_n_grams)), exclusion_writer=writer("gopher_repetition"),
        language=text_lib.TOKENIZER))
  if h.lines.enabled:
    f = h.lines
    steps.append(FineWebQualityFilter(
        exclusion_writer=writer("lines"), line_punct_thr=f.line_punct_thr, short_line_thr=f.short_line_thr,
        short_line_length=f.short_line_length, char_duplicates_ratio=f.char_duplicates_ratio,
        new_line_ratio=f.new_line_ratio, language=text_lib.TOKENIZER))
  if h.url_blocklist or h.word_blocklist:
    steps.append(BlocklistFilter(h.url_blocklist, h.word_blocklist, h.max_blocked_words, writer("blocklist")))
  return steps
