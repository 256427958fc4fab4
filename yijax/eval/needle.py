"""Needle in a haystack: retrieval of one inserted sentence across context lengths and depths.

The protocol of Fu et al. (2024, "Data Engineering for Scaling Language
Models to 128K Context"), which runs gkamradt's LLMTest_NeedleInAHaystack on
base models: context lengths evenly spaced from `min_length` to `max_length`,
needle depths evenly spaced from 0% to 100%; the haystack is a text cut to the
length in tokens, the needle goes in at the last sentence or line boundary at
or before the depth's token position (100% = at the end), the prompt asks the
question, and up to 50 tokens are decoded greedily. The score is the fraction
of the answer's words found in the output (lower case, punctuation removed),
as in Fu et al.'s `visualize.py` (theirs divides a set intersection by the
word count, so a repeated answer word could never score 1; here every answer
word counts once per occurrence and the maximum is 1).

Fu et al.'s own numbers (88.0 for LLaMA-2 7B at 80K) come from their scripts, which `--scoring=fu2024` and
`--layout=fu2024` follow:
  fu_score   `visualize.py`: the set of the output's lower-cased whitespace-separated words intersected
             with the expected answer's ("eat a sandwich and sit in dolores park on a sunny day.": 12
             words, punctuation kept, "a" twice), divided by 12, so the maximum is 11/12
  rouge1     the `score` field of their per-cell records: the ROUGE-1 F-measure of the output against
             the needle, with stemming, times 10 (needs the `rouge_score` package)
  layout     `needle_in_haystack.py` trims the haystack to the context length minus a 200-token buffer
             and the needle, and the template and question come on top of it; the default layout fills
             the context length with the whole prompt and leaves room for the answer
Every record carries score and fu_score (and rouge1 with rouge_score installed); --scoring picks the one
the mean and the heatmap use (a record without the field, e.g. from an older run, is scored from its
output).

A cell of length L is a prompt of L - max_new_tokens tokens (template,
haystack, needle, question), so prompt plus answer fit in L positions: the
original keeps the same room free (`final_context_length_buffer`), and a
cell at the model's max_seq_len never decodes past the trained window.

Cells are grouped by the Generator's prompt bucket (powers of two) and decoded
in batches of one fixed size (the last batch of a bucket is padded with
copies of a real prompt), so a run compiles prefill and decode once per
distinct bucket and nothing else. `needle.jsonl` is appended after every
batch, and a rerun skips the cells it already holds (resumable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from yijax import paths
from yijax.errors import ConfigError, MissingFileError

RESULTS_FILE = "needle.jsonl"
HEATMAP_FILE = "needle.png"
DEFAULT_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
DEFAULT_QUESTION = "What is the best thing to do in San Francisco?"
DEFAULT_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"
# Fu et al.'s base-model prompt, without its leading "<|im_start|> " (not a special token here)
DEFAULT_TEMPLATE = ("This is a very long story book: <book> {context} </book>.\n"
                    " Based on the content of the book, Question: {question}\nAnswer:")
# red -> yellow -> green, the colors of Fu et al.'s heatmaps
HEATMAP_COLORS = ("#F0496E", "#EBB839", "#0CD79F")
_SENTENCE_END = (".", "!", "?")
SCORINGS = {"words": "score", "fu2024": "fu_score", "rouge1": "rouge1"}  # --scoring -> the record's field
LAYOUTS = ("yijax", "fu2024")
FU_BUFFER = 200  # Fu et al.'s final_context_length_buffer


@dataclasses.dataclass(frozen=True)
class NeedleTask:
  """What is hidden (needle), what is asked (question), what counts (answer), and the prompt around them.

  `template` holds `{context}` (the haystack with the needle) once and may
  hold `{question}`; the needle is inserted as its own line.
  """

  needle: str = DEFAULT_NEEDLE
  question: str = DEFAULT_QUESTION
  answer: str = DEFAULT_ANSWER
  template: str = DEFAULT_TEMPLATE

  def validate(self) -> "NeedleTask":
    if not self.needle.strip():
      raise ConfigError("--needle is empty; give the sentence to hide in the haystack")
    if not answer_words(self.answer):
      raise ConfigError(f"--answer={self.answer!r} has no words to score; give the words the output must contain")
    if self.template.count("{context}") != 1:
      raise ConfigError(f"--template={self.template!r} must contain {{context}} exactly once (where the haystack "
                       "goes), e.g. '{context}\\n{question}'")
    return self

  def parts(self) -> tuple[str, str, str]:
    """(text before the haystack, the needle as inserted, text after the haystack)."""
    prefix, suffix = self.template.split("{context}")
    fill = lambda text: text.replace("{question}", self.question)
    return fill(prefix), "\n" + self.needle.strip("\n") + "\n", fill(suffix)


PASSKEY = NeedleTask(needle="The pass key is 71432. Remember it.", question="What is the pass key? The pass key is",
                     answer="71432", template="{context}\n{question}")


def answer_words(text: str) -> list[str]:
  """Lower-cased words with punctuation removed: the unit of the score."""
  return re.sub(r"[^\w\s]", "", text.lower()).split()


def score_output(output: str, answer: str) -> float:
  """Fraction of the answer's words present in the output, in [0, 1]."""
  wanted, found = answer_words(answer), set(answer_words(output))
  return sum(word in found for word in wanted) / len(wanted)


def fu_expected_answer(task: "NeedleTask") -> str:
  """The answer as Fu et al.'s visualize.py spells it: with the needle's closing period when the needle ends
  with the answer (so the default needle's answer is their 12 words)."""
  needle = task.needle.strip()
  return task.answer + "." if needle.endswith(task.answer + ".") else task.answer


def fu_score(output: str, expected: str) -> float:
  """Fu et al.'s score: |set(output words) & set(expected words)| / len(expected words), words split on
  whitespace after lower-casing, punctuation kept."""
  wanted = expected.lower().split()
  return len(set(output.lower().split()) & set(wanted)) / len(wanted)


def rouge1(output: str, needle: str) -> float | None:
  """ROUGE-1 F-measure x 10 of the output against the needle, with stemming (rouge_score, as in Fu et al.'s
  records); None when rouge_score is not installed."""
  try:
    from rouge_score import rouge_scorer
  except ImportError:
    return None
  return float(rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score(needle, output)["rouge1"].fmeasure * 10)


def record_score(record: dict, scoring: str, task: "NeedleTask | None" = None) -> float:
  """The record's score under --scoring (computed from its output when the record lacks the field)."""
  key = SCORINGS[scoring]
  if key in record or task is None:
    return float(record[key])
  if scoring == "fu2024":
    return fu_score(record["output"], fu_expected_answer(task))
  value = rouge1(record["output"], task.needle)
  if value is None:
    raise ConfigError("--scoring=rouge1 needs the rouge_score package: pip install rouge_score")
  return value


def haystack_count(length: int, builder: "PromptBuilder", max_new_tokens: int, layout: str) -> int:
  """Haystack tokens of a cell of `length`: yijax: what the prompt leaves of length - max_new_tokens;
  fu2024: length - 200 - the needle (the template and question on top)."""
  if layout == "fu2024":
    return length - FU_BUFFER - len(builder.needle)
  return length - max_new_tokens - builder.fixed_tokens


DEFAULT_MIN_LENGTH = 1000


def default_min_length(max_length: int, num_lengths: int) -> int:
  """The shortest context when none is given: 1000 tokens, or max_length / num_lengths when that is
  shorter (a short model or a small --max_length), so the grid still spans up to max_length."""
  return min(DEFAULT_MIN_LENGTH, max(1, max_length // max(num_lengths, 1)))


def context_lengths(min_length: int, max_length: int, num_lengths: int) -> list[int]:
  """`num_lengths` lengths evenly spaced over [min_length, max_length], rounded, duplicates dropped."""
  if num_lengths < 1:
    raise ConfigError(f"--num_lengths={num_lengths} must be >= 1")
  if not 0 < min_length <= max_length:
    raise ConfigError(f"--min_length={min_length} must be positive and at most --max_length={max_length}; "
                     "lower --min_length or raise --max_length")
  return sorted({int(x) for x in np.round(np.linspace(min_length, max_length, num_lengths))})


def needle_depths(num_depths: int) -> list[float]:
  """`num_depths` depths in percent, evenly spaced over [0, 100] with both ends, rounded to integers as
  in the original (a single depth is 100%: the needle right before the question)."""
  if num_depths < 1:
    raise ConfigError(f"--num_depths={num_depths} must be >= 1")
  if num_depths == 1:
    return [100.0]
  return sorted({float(x) for x in np.round(np.linspace(0, 100, num_depths))})


def default_haystack_text(min_chars: int = 0) -> str:
  """The embedded corpus's held-out documents (python_docs, then python_code), blank-line separated;
  stops once `min_chars` characters are collected (0 = all of them)."""
  from yijax.data import corpus

  texts, total = [], 0
  for source in ("python_docs", "python_code"):
    for _, text in corpus.documents(source, "validation"):
      texts.append(text)
      total += len(text)
      if min_chars and total >= min_chars:
        return "\n\n".join(texts)
  return "\n\n".join(texts)


class Haystack:
  """A text as token ids, repeated as needed, with the positions where a needle may go.

  A position p (insert before token p) is a boundary when p == 0, when token
  p-1 ends a line, or when it ends a sentence (. ! ?) and token p starts with
  whitespace (so `os.path` is not split). The original backs up to the last
  period token; this is the same rule made to fit code as well as prose.
  """

  def __init__(self, tokenizer, text: str):
    if not text.strip():
      raise ConfigError("the haystack text is empty; give --haystack=FILE with some text in it")
    self.tokenizer = tokenizer
    self.unit = np.asarray(tokenizer.encode(text.rstrip("\n") + "\n\n"), np.int32)
    self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    self._unit_boundaries = self._find_boundaries(self.unit)
    self._ids, self._boundaries = self.unit, self._unit_boundaries

  def _find_boundaries(self, ids: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(ids, return_inverse=True)
    texts = [self.tokenizer.decode([int(i)]) for i in unique]
    ends_line = np.array([t.endswith("\n") for t in texts])[inverse]
    ends_sentence = np.array([t.rstrip(" ").endswith(_SENTENCE_END) for t in texts])[inverse]
    starts_space = np.array([t[:1].isspace() for t in texts])[inverse]
    after = ends_line | (ends_sentence & np.roll(starts_space, -1))  # the text repeats: the last token's
    return np.concatenate([[0], np.flatnonzero(after) + 1])  # next is the first; positions p, sorted

  def tokens(self, count: int) -> np.ndarray:
    """The first `count` token ids of the text repeated end to end."""
    if count > len(self._ids):
      repeats = -(-count // len(self.unit))
      self._ids = np.tile(self.unit, repeats)
      self._boundaries = np.concatenate([self._unit_boundaries + k * len(self.unit) for k in range(repeats)])
    return self._ids[:count]

  def insertion_point(self, count: int, depth: float) -> int:
    """Where the needle goes in the first `count` tokens for a depth in percent."""
    self.tokens(count)
    if depth >= 100:
      return count
    target = int(count * depth / 100)
    return int(self._boundaries[np.searchsorted(self._boundaries, target, side="right") - 1])


@dataclasses.dataclass(frozen=True)
class Prompt:
  ids: list[int]
  needle_position: int  # index of the needle's first token in ids
  haystack_tokens: int


class PromptBuilder:
  """Encodes a task once and builds the prompt of any (prompt length, depth)."""

  def __init__(self, tokenizer, task: NeedleTask, add_bos: bool = False):
    task.validate()
    prefix, needle, suffix = task.parts()
    bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id >= 0 else []
    self.prefix = bos + tokenizer.encode(prefix)
    self.needle = tokenizer.encode(needle)
    self.suffix = tokenizer.encode(suffix)
    self.fixed_tokens = len(self.prefix) + len(self.needle) + len(self.suffix)

  def build(self, haystack: Haystack, prompt_tokens: int, depth: float) -> Prompt:
    return self.build_with_haystack(haystack, prompt_tokens - self.fixed_tokens, depth, prompt_tokens)

  def build_with_haystack(self, haystack: Haystack, count: int, depth: float, prompt_tokens: int | None = None):
    """The prompt around `count` haystack tokens with the needle at `depth`."""
    prompt_tokens = count + self.fixed_tokens if prompt_tokens is None else prompt_tokens
    if count < 1:
      raise ConfigError(f"a prompt of {prompt_tokens} tokens leaves no room for the haystack: the template, "
                       f"needle and question take {self.fixed_tokens}; raise --min_length (or shorten "
                       "--needle / --question / --template, or lower --max_new_tokens)")
    hay = haystack.tokens(count).tolist()
    point = haystack.insertion_point(count, depth)
    ids = self.prefix + hay[:point] + self.needle + hay[point:] + self.suffix
    return Prompt(ids, len(self.prefix) + point, count)


def settings_fingerprint(task: NeedleTask, haystack: Haystack, tokenizer, max_new_tokens: int, add_bos: bool,
                         model_id: str = "", layout: str = "yijax") -> str:
  """What a result depends on (the model as far as `model_id` names it); other settings' results never mix."""
  values = dict(dataclasses.asdict(task), haystack=haystack.sha256, tokenizer=getattr(tokenizer, "checksum", ""),
                max_new_tokens=max_new_tokens, add_bos=add_bos, model=model_id)
  if layout != "yijax":  # the default layout's fingerprint is what earlier runs recorded
    values["layout"] = layout
  return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def read_results(path: str, settings: str | None = None) -> dict[tuple[int, float], dict]:
  """Records of a needle.jsonl by (length, depth); a torn last line (a killed run) is ignored.
  With `settings`, records made with other settings are an error."""
  found: dict[tuple[int, float], dict] = {}
  if not paths.exists(path):
    return found
  for line in paths.read_text(path).splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if settings is not None and record.get("settings") != settings:
      raise ConfigError(f"{path} holds needle results made with other settings (needle, question, answer, "
                        "template, haystack, tokenizer, max_new_tokens, add_bos or model differ); use a new --out")
    found[int(record["length"]), float(record["depth"])] = record
  return found


def _batches(pending: list[tuple[int, float]], grid: list[tuple[int, float]], prompt_length: Callable[[int], int],
             batch_size: int):
  """Pending cells grouped by the Generator's prompt bucket, in batches of one row count (the last of a
  bucket padded), sized from the whole grid so a resumed run reuses the shapes of the first."""
  from yijax.eval.generate import bucket_length

  bucket_of = lambda cell: bucket_length(prompt_length(cell[0]))
  per_bucket: dict[int, int] = {}
  for cell in grid:
    per_bucket[bucket_of(cell)] = per_bucket.get(bucket_of(cell), 0) + 1
  rows = min(batch_size, max(per_bucket.values(), default=1))
  by_bucket: dict[int, list] = {}
  for cell in sorted(pending):
    by_bucket.setdefault(bucket_of(cell), []).append(cell)
  for bucket in sorted(by_bucket):
    group = by_bucket[bucket]
    for start in range(0, len(group), rows):
      yield group[start:start + rows], rows


def _append_lines(path: str, lines: list[str]) -> None:
  """Appends lines, starting a new line first if a killed run left a torn one (a gs:// file, which has no
  append, is written again whole)."""
  text = "".join(line + "\n" for line in lines)
  if paths.is_url(path):
    before = paths.read_text(path) if paths.exists(path) else ""
    paths.write_text(path, before + ("\n" if before and not before.endswith("\n") else "") + text)
    return
  torn = False
  if os.path.exists(path) and os.path.getsize(path):
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      torn = f.read(1) != b"\n"
  with open(path, "a") as f:
    f.write(("\n" if torn else "") + text)
    f.flush()


def run_needle(config, params, tokenizer, lengths: Sequence[int], depths: Sequence[float], *,
               task: NeedleTask = NeedleTask(), haystack: str | Haystack | None = None, max_new_tokens: int = 50,
               batch_size: int = 8, add_bos: bool = False, results_path: str | None = None, generator=None,
               model_id: str = "", log: Callable[[str], None] | None = None, layout: str = "yijax",
               scoring: str = "words") -> list[dict]:
  """Scores every (length, depth) cell; returns one record per cell, sorted by (length, depth).

  layout: "yijax" (the prompt fills length - max_new_tokens) or "fu2024" (the haystack is length - 200 - the
  needle, as in Fu et al.); scoring: the field the log's means report (module docstring).

  haystack: text, a Haystack, or None (the embedded corpus's held-out documents).
  results_path: a JSONL file; cells it holds are skipped, new ones appended after every batch (records
  of other settings or another `model_id`, e.g. the checkpoint's params dir, are an error).
  generator: a `Generator` of this config to reuse: its compiled prefill/decode serve any params of the
  same shapes (several checkpoints of one run compile once); it is pointed at `params` (None: keep its
  own). `generator.trace_counts` says how often it compiled.
  """
  from yijax.eval.generate import Generator

  if max_new_tokens < 1:
    raise ConfigError(f"--max_new_tokens={max_new_tokens} must be >= 1")
  if batch_size < 1:
    raise ConfigError(f"--batch_size={batch_size} must be >= 1")
  if not isinstance(haystack, Haystack):
    text = haystack if haystack is not None else default_haystack_text(8 * max(lengths, default=0))
    haystack = Haystack(tokenizer, text)
  if layout not in LAYOUTS:
    raise ConfigError(f"--layout={layout!r} is not one of {list(LAYOUTS)}")
  if scoring not in SCORINGS:
    raise ConfigError(f"--scoring={scoring!r} is not one of {list(SCORINGS)}")
  builder = PromptBuilder(tokenizer, task, add_bos)
  count_of = lambda length: haystack_count(length, builder, max_new_tokens, layout)
  settings = settings_fingerprint(task, haystack, tokenizer, max_new_tokens, add_bos, model_id, layout)
  done = read_results(results_path, settings) if results_path else {}
  grid = [(int(length), float(depth)) for length in lengths for depth in depths]
  pending = [cell for cell in grid if cell not in done]
  if pending and count_of(min(lengths)) < 1:
    taken = min(lengths) - count_of(min(lengths))
    raise ConfigError(f"--min_length={min(lengths)} leaves no room for the haystack: the "
                     + (f"{FU_BUFFER}-token buffer and the needle take" if layout == "fu2024" else
                        f"template, needle, question and the answer (--max_new_tokens={max_new_tokens}) take")
                     + f" {taken} tokens; use --min_length >= {taken + 1}")
  if generator is not None and params is not None:
    generator.params = params
  generator = generator or (Generator(config, params) if pending else None)
  stop_ids = [tokenizer.eos_id] if tokenizer.eos_id >= 0 else []
  expected = fu_expected_answer(task)
  for batch, rows in _batches(pending, grid, lambda length: count_of(length) + builder.fixed_tokens, batch_size):
    started = time.time()
    prompts = [builder.build_with_haystack(haystack, count_of(length), depth) for length, depth in batch]
    padded = [p.ids for p in prompts] + [prompts[-1].ids] * (rows - len(prompts))
    outputs = generator.generate(padded, max_new_tokens, stop_ids=stop_ids)
    records = []
    for (length, depth), prompt, out in zip(batch, prompts, outputs):
      text = tokenizer.decode([t for t in out if t not in stop_ids])
      record = {"length": length, "depth": depth, "score": score_output(text, task.answer),
                "fu_score": fu_score(text, expected), "output": text, "needle_position": prompt.needle_position,
                "prompt_tokens": len(prompt.ids), "haystack_tokens": prompt.haystack_tokens, "settings": settings}
      rouge = rouge1(text, task.needle)
      if rouge is not None:
        record["rouge1"] = rouge
      records.append(record)
    if results_path:
      _append_lines(results_path, [json.dumps(r) for r in records])
    done.update({(r["length"], r["depth"]): r for r in records})
    if log:
      mean = np.mean([record_score(r, scoring, task) for r in records])
      log(f"needle: lengths {batch[0][0]}..{batch[-1][0]}, {len(batch)} cells, mean score {mean:.3f} "
          f"({time.time() - started:.1f}s)")
  return [done[cell] for cell in sorted(grid)]


def mean_score(records: Iterable[dict], scoring: str = "words", task: NeedleTask | None = None) -> float:
  scores = [record_score(r, scoring, task) for r in records]
  return float(np.mean(scores)) if scores else float("nan")


def plot_heatmap(records: Sequence[dict], path: str, train_length: int | None = None, title: str | None = None,
                 scoring: str = "words", task: NeedleTask | None = None) -> None:
  """Heatmap of scores (--scoring's field): x = context length, y = depth (0% on top), red (0) -> green (1),
  as in Fu et al. (rouge1: 0 -> 10); a dashed white line marks `train_length` (the model's max_seq_len) when
  lengths cross it. `path`: local or gs://."""
  import io

  from matplotlib.colors import LinearSegmentedColormap
  from matplotlib.figure import Figure

  lengths = sorted({int(r["length"]) for r in records})
  depths = sorted({float(r["depth"]) for r in records})
  grid = np.full((len(depths), len(lengths)), np.nan)
  for r in records:
    grid[depths.index(float(r["depth"])), lengths.index(int(r["length"]))] = record_score(r, scoring, task)
  figure = Figure(figsize=(max(6.0, 0.35 * len(lengths) + 3), max(3.5, 0.35 * len(depths) + 2)))
  axes = figure.add_subplot()
  cmap = LinearSegmentedColormap.from_list("needle", HEATMAP_COLORS)
  top = 10.0 if scoring == "rouge1" else 1.0
  image = axes.imshow(grid, cmap=cmap, vmin=0.0, vmax=top, aspect="auto", interpolation="nearest")
  axes.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45, ha="right")
  axes.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
  axes.set_xticks(np.arange(len(lengths) + 1) - 0.5, minor=True)
  axes.set_yticks(np.arange(len(depths) + 1) - 0.5, minor=True)
  axes.grid(which="minor", color="grey", linestyle="--", linewidth=0.5)
  axes.tick_params(which="minor", length=0)
  if train_length is not None and lengths[0] <= train_length < lengths[-1]:
    inside = sum(n <= train_length for n in lengths)
    axes.axvline(inside - 0.5, color="white", linestyle="--", linewidth=3)
  axes.set_xlabel("Token Limit")
  axes.set_ylabel("Depth Percent")
  axes.set_title(title or f"Needle in a haystack: fact retrieval across context lengths\n"
                          f"mean score {mean_score(records, scoring, task):.3f} ({scoring})")
  figure.colorbar(image, ax=axes, label=f"Score ({scoring})")
  figure.tight_layout()
  image_bytes = io.BytesIO()
  figure.savefig(image_bytes, format=os.path.splitext(path)[1].lstrip(".") or "png", dpi=120)
  paths.write_bytes(path, image_bytes.getvalue())


def evaluate_to_dir(config, params, tokenizer, out_dir: str, *, min_length: int = 0, max_length: int = 0,
                    num_lengths: int = 40, num_depths: int = 10, haystack_path: str | None = None,
                    task: NeedleTask = NeedleTask(), max_new_tokens: int = 50, batch_size: int = 8,
                    add_bos: bool = False, model_id: str = "",
                    log: Callable[[str], None] | None = print, layout: str = "yijax",
                    scoring: str = "words") -> dict[str, Any]:
  """`yijax eval needle`: the whole grid into OUT/needle.jsonl (resumable) and OUT/needle.png; a summary."""
  from yijax.eval.generate import Generator

  max_length = max_length or config.max_seq_len
  min_length = min_length or default_min_length(max_length, num_lengths)
  lengths = context_lengths(min_length, max_length, num_lengths)
  depths = needle_depths(num_depths)
  if haystack_path is not None:
    if not os.path.isfile(haystack_path):
      raise MissingFileError(f"--haystack={haystack_path}: no such file; give a text file (or leave --haystack "
                              "out for the embedded corpus's held-out documents)")
    with open(haystack_path, encoding="utf-8", errors="replace") as f:
      text = f.read()
  else:
    text = default_haystack_text(8 * max_length)
  if log and max_length > config.max_seq_len:
    log(f"needle: lengths above the model's max_seq_len={config.max_seq_len} test extrapolation")
  os.makedirs(out_dir, exist_ok=True)
  started = time.time()
  generator = Generator(config, params)
  records = run_needle(config, params, tokenizer, lengths, depths, task=task, haystack=Haystack(tokenizer, text),
                       max_new_tokens=max_new_tokens, batch_size=batch_size, add_bos=add_bos,
                       results_path=os.path.join(out_dir, RESULTS_FILE), generator=generator, model_id=model_id,
                       log=log, layout=layout, scoring=scoring)
  plot_heatmap(records, os.path.join(out_dir, HEATMAP_FILE), train_length=config.max_seq_len, scoring=scoring,
               task=task)
  return {"mean_score": mean_score(records, scoring, task), "scoring": scoring, "layout": layout,
          "cells": len(records), "lengths": lengths, "depths": depths,
          "compilations": dict(generator.trace_counts), "seconds": round(time.time() - started, 2),
          "results": os.path.join(out_dir, RESULTS_FILE), "heatmap": os.path.join(out_dir, HEATMAP_FILE)}
