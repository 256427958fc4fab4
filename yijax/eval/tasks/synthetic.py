"""Seeded synthetic tasks (arith, facts, induction) and the pretraining text that teaches two of them.

arith: 2-3 digit addition ("123 + 456 =" -> 4 choices: the sum among
consecutive values stepping by 1, 10 or 100, at a uniform rank) and
comparison ("Which is larger: 312 or 298? Answer:" -> the two numbers, both
with the same digit count; also "smaller"), half each: chance 0.25 / 0.5,
0.375 overall. Every operand pair has a fixed side, train or eval, by
sha256 of (form, smaller, larger), independent of any seed: evaluation items
come only from the eval side and `arith_documents` only from the train side,
so no evaluation item (in either operand order, or with the other comparison
word) is ever in the pretraining text, whatever seeds the two use.

facts: invented countries and capitals ("The capital of Vorland is
Quenton."), `facts_per_group` facts per group, a group per k in `facts_k`.
`facts_documents` states each fact of group k exactly k times: first in the
evaluation's form, then cycling through paraphrases ("Quenton is the capital
of Vorland.", ...); group k = 0 never appears (the chance control). The
item: "The capital of Vorland is" -> its capital and 3 other capitals of the
same group (equally frequent in the text, so frequency is no cue). The fact
set is a function of the seed: evaluate with the seed the text was written
with.

induction: random spans of `span_len` distinct ordinary token ids (no
control, unknown or byte pieces), each repeated once after BOS; the score is
greedy accuracy of predicting tokens 2..span_len of the repeat (the first
token of the repeat cannot be known), the in-context copying probe of
induction heads. It needs no text, only token ids.
"""

from __future__ import annotations

import numpy as np

from yijax.errors import ConfigError
from yijax.eval.tasks.base import Task, np_rng_for, place_answer, rng_for, stable_fraction

ADD_STEPS = (1, 10, 100)
COMPARE_WORDS = ("larger", "smaller")
FACTS_K = (0, 1, 2, 4, 8, 16)
FACT_TEMPLATES = (  # the first is the evaluation's form
    "The capital of {entity} is {city}.",
    "{city} is the capital of {entity}.",
    "{entity}'s capital is {city}.",
    "The seat of government of {entity} is the city of {city}.",
    "Travelers to {entity} usually arrive in its capital, {city}.",
)
HELD_OUT_FACT_TEMPLATE = "Ask anyone in {entity} and they will name {city} as their capital."
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gl", "k", "kr", "l", "m", "n", "p", "pr", "qu", "r", "s", "sh",
           "st", "t", "th", "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou", "y")
_CODAS = ("", "", "n", "r", "l", "s", "nd", "rk")
_PLACE_ENDINGS = ("land", "ia", "mar", "dor", "heim", "ovia", "stan", "vale")
_CITY_ENDINGS = ("ton", "ville", "burg", "port", "holm", "grad", "ford", "mouth")


# ---------------------------------------------------------------- arith


def arith_side(form: str, a: int, b: int) -> str:
  """"train" or "eval": the fixed side of an operand pair (either order) of a form ("add" / "compare")."""
  return "eval" if stable_fraction(f"arith:{form}:{min(a, b)}:{max(a, b)}") < 0.5 else "train"


def _number(rng, digits: int) -> int:
  return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def _draw_pair(rng, form: str, side: str) -> tuple[int, int]:
  while True:
    if form == "add":
      a, b = _number(rng, rng.choice((2, 3))), _number(rng, rng.choice((2, 3)))
    else:
      digits = rng.choice((2, 3))
      a, b = _number(rng, digits), _number(rng, digits)
      if a == b:
        continue
    if arith_side(form, a, b) == side:
      return a, b


def arith_line(form: str, a: int, b: int, word: str = "larger") -> str:
  """A worked example: "a + b = s" or "Which is larger: a or b? Answer: x"."""
  if form == "add":
    return f"{a} + {b} = {a + b}"
  pick = max(a, b) if word == "larger" else min(a, b)
  return f"Which is {word}: {a} or {b}? Answer: {pick}"


def _sum_choices(rng, total: int, count: int) -> tuple[list[str], int]:
  """`count` numbers stepping by 1, 10 or 100 with the sum at a uniform rank among them.

  All have the sum's digit count, so neither length nor rank (a model that
  prefers larger digits, or the middle value) tells the answer: only the
  digit the choices differ in does.
  """
  while True:
    step = rng.choice(ADD_STEPS)
    rank = rng.randrange(count)
    values = [total + (j - rank) * step for j in range(count)]
    if all(len(str(v)) == len(str(total)) for v in values):
      return [str(v) for v in values], rank


def build_arith(name: str, seed: int, num_items: int = 200, num_choices: int = 4) -> Task:
  """Half addition (num_choices choices), half comparison (2 choices), from the eval side only."""
  if num_items < 1 or not 2 <= num_choices <= 6:
    raise ConfigError(f"arith needs num_items >= 1 and 2 <= num_choices <= 6, got {num_items}, {num_choices}")
  rng = rng_for(name, seed)
  items, used = [], set()
  while len(items) < num_items:
    form = "add" if len(items) % 2 == 0 else "compare"
    a, b = _draw_pair(rng, form, "eval")
    key = (form, min(a, b), max(a, b))
    if key in used:
      continue
    used.add(key)
    if form == "add":
      choices, answer = _sum_choices(rng, a + b, num_choices)
      context = f"{a} + {b} ="
    else:
      word = rng.choice(COMPARE_WORDS)
      choices = [str(a), str(b)]
      answer = choices.index(str(max(a, b) if word == "larger" else min(a, b)))
      context = f"Which is {word}: {a} or {b}? Answer:"
    items.append({"id": f"arith/{len(items)}", "group": form, "context": context, "choices": choices,
                  "answer": answer})
  return Task(name, "multiple_choice", items=items,
              description="2-3 digit addition (4 choices) and comparison (2 choices), eval-side pairs only")


def arith_documents(seed: int, num_examples: int = 20_000, examples_per_doc: int = 16,
                    side: str = "train") -> list[str]:
  """Worked examples of both forms from one side of the split, `examples_per_doc` lines per document."""
  rng = rng_for(f"arith_text_{side}", seed)
  lines = []
  for _ in range(num_examples):
    form = rng.choice(("add", "compare"))
    a, b = _draw_pair(rng, form, side)
    lines.append(arith_line(form, a, b, rng.choice(COMPARE_WORDS)))
  return ["\n".join(lines[i:i + examples_per_doc]) for i in range(0, len(lines), examples_per_doc)]


# ---------------------------------------------------------------- facts


def _name(rng, endings: tuple[str, ...]) -> str:
  stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(1, 2)))
  return (stem + rng.choice(endings)).capitalize()


def facts_table(seed: int, facts_k=FACTS_K, facts_per_group: int = 20) -> list[dict]:
  """[{"entity", "city", "k"}]: distinct invented names, `facts_per_group` per k."""
  facts_k = tuple(int(k) for k in facts_k)
  if facts_per_group < 1 or not facts_k or min(facts_k) < 0 or len(set(facts_k)) != len(facts_k):
    raise ConfigError(f"facts need facts_per_group >= 1 and distinct facts_k >= 0; got {facts_per_group}, "
                     f"{facts_k}")
  rng = rng_for("facts_table", seed)
  taken: set[str] = set()

  def fresh(endings):
    while True:
      name = _name(rng, endings)
      if name not in taken:
        taken.add(name)
        return name

  return [{"entity": fresh(_PLACE_ENDINGS), "city": fresh(_CITY_ENDINGS), "k": k}
          for k in facts_k for _ in range(facts_per_group)]


def fact_prompt(entity: str) -> str:
  return f"The capital of {entity} is"


def build_facts(name: str, seed: int, facts_k=FACTS_K, facts_per_group: int = 20, num_choices: int = 4) -> Task:
  """One item per fact; distractors are capitals of the same k group; group = "k<k>"."""
  table = facts_table(seed, facts_k, facts_per_group)
  rng = rng_for(name, seed)
  items = []
  for index, fact in enumerate(table):
    same = [f["city"] for f in table if f["k"] == fact["k"] and f["city"] != fact["city"]]
    others = same if len(same) >= num_choices - 1 else [f["city"] for f in table if f["city"] != fact["city"]]
    if len(others) < num_choices - 1:
      raise ConfigError(f"facts: {len(table)} facts cannot give {num_choices} choices; raise facts_per_group")
    choices, answer = place_answer(rng, fact["city"], rng.sample(others, num_choices - 1))
    items.append({"id": f"facts/{index}", "group": f"k{fact['k']}", "context": fact_prompt(fact["entity"]),
                  "choices": choices, "answer": answer})
  return Task(name, "multiple_choice", items=items,
              description=f"capitals of invented countries seen k = {tuple(facts_k)} times in pretraining")


def facts_documents(seed: int, facts_k=FACTS_K, facts_per_group: int = 20, sentences_per_doc: int = 8,
                    held_out_template: bool = False) -> list[str]:
  """Each fact of group k stated k times (or, held_out_template, once in a paraphrase never trained on)."""
  table = facts_table(seed, facts_k, facts_per_group)
  sentences = []
  for index, fact in enumerate(table):
    if held_out_template:
      if fact["k"] > 0:
        sentences.append(HELD_OUT_FACT_TEMPLATE.format(**fact))
      continue
    for mention in range(fact["k"]):
      template = 0 if mention == 0 else 1 + (index + mention - 1) % (len(FACT_TEMPLATES) - 1)
      sentences.append(FACT_TEMPLATES[template].format(**fact))
  rng_for("facts_text" + ("_held_out" if held_out_template else ""), seed).shuffle(sentences)
  return [" ".join(sentences[i:i + sentences_per_doc]) for i in range(0, len(sentences), sentences_per_doc)]


# ---------------------------------------------------------------- induction


def ordinary_token_ids(tokenizer=None, vocab_size: int | None = None) -> np.ndarray:
  """Ids of ordinary pieces: the tokenizer's non-control, non-unknown, non-byte pieces, else 3..vocab_size-1."""
  processor = getattr(tokenizer, "processor", None)
  if processor is not None:
    return np.array([i for i in range(tokenizer.vocab_size) if not (
        processor.IsControl(i) or processor.IsUnknown(i) or processor.IsUnused(i) or processor.IsByte(i))],
        np.int32)
  size = vocab_size or getattr(tokenizer, "vocab_size", None)
  if not size:
    raise ConfigError("induction needs token ids: pass tokenizer=... or vocab_size=N (ids 3..N-1 are drawn)")
  return np.arange(3, size, dtype=np.int32)


def build_induction(name: str, seed: int, tokenizer=None, num_sequences: int = 64, span_len: int = 32,
                    vocab_size: int | None = None) -> Task:
  """data = {"tokens": int32 [n, (1 +) 2 * span_len], "span_start", "span_len"}; BOS first when known."""
  if num_sequences < 1 or span_len < 2:
    raise ConfigError(f"induction needs num_sequences >= 1 and span_len >= 2; got {num_sequences}, {span_len}")
  ids = ordinary_token_ids(tokenizer, vocab_size)
  if len(ids) < span_len:
    raise ConfigError(f"span_len={span_len} exceeds the {len(ids)} ordinary token ids; lower span_len")
  rng = np_rng_for(name, seed)
  spans = np.stack([rng.choice(ids, span_len, replace=False) for _ in range(num_sequences)]).astype(np.int32)
  bos = getattr(tokenizer, "bos_id", -1)
  width = 1 if bos is not None and bos >= 0 else 0
  prefix = np.full((num_sequences, width), bos if width else 0, np.int32)
  tokens = np.concatenate([prefix, spans, spans], axis=1)
  return Task(name, "induction", data={"tokens": tokens, "span_start": prefix.shape[1], "span_len": span_len},
              description=f"greedy copy accuracy on {num_sequences} repeated spans of {span_len} random tokens")
