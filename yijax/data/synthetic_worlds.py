"""Seeded synthetic worlds of invented people: biographies, question-answer text, corrupted documents, QA items.

The stability-gap study (experiments/stability_gap) needs a setting where a
tiny model has a "domain" whose task it can only solve by combining a
format learned in pretraining with facts learned in continual pretraining:

  world A  people whose biographies (several paraphrases each) AND
           question-answer text in a fixed format ("Q: Where was X born?\\nA:
           Y") are pretraining data; the QA of a held-out part of them is
           never trained on (the general task: extract a fact seen only in
           prose, in the QA format)
  world B  other people; pretraining sees one biography of a small part of
           them (the intro), the domain corpus many biographies of all of
           them in plain prose, never in QA form; the domain task is their QA

Each person has one value per attribute (birth city, occupation, employer,
university) drawn from shared pools, so answer strings are familiar
tokens and only the association is new. Domain documents can be corrupted
(`corrupt`): words shuffled, characters replaced by noise, or replaced by
off-topic text, the documents quality selection should drop. Everything is
a function of the seed (random.Random seeded with strings). These are not
battery tasks (yijax/eval/tasks builds items from a seed alone); the study
writes their items as JSONL task files, which the battery scores by path.
"""

from __future__ import annotations

import dataclasses
import random

ATTRIBUTES = ("city", "job", "employer", "school")
QUESTIONS = {
    "city": "Where was {name} born?",
    "job": "What did {name} work as?",
    "employer": "Which company did {name} work for?",
    "school": "Which university did {name} attend?",
}
# one sentence per attribute, several paraphrases; the last of each is held out (validation text only)
SENTENCES = {
    "city": ("{name} was born in {city}.", "{name} came into the world in the town of {city}.",
             "The birthplace of {name} was {city}.", "{name} grew up in {city}, where {pronoun} was born."),
    "job": ("{name} worked as a {job}.", "By trade, {name} was a {job}.",
            "For most of {possessive} life {name} earned a living as a {job}.", "{name} made a career as a {job}."),
    "employer": ("{name} was employed by {employer}.", "{name} spent many years at {employer}.",
                 "The company {employer} hired {name} early on.", "{name} took a position at {employer}."),
    "school": ("{name} studied at {school}.", "{name} graduated from {school}.",
               "As a student, {name} attended {school}.", "{name} earned a degree at {school}."),
}
FILLERS = ("{name} was known for a quiet sense of humor.", "Friends described {name} as patient and curious.",
           "{name} enjoyed long walks in the evening.", "Later, {name} wrote letters to old colleagues.")
POOLS = {
    "city": ("Marlow", "Tessing", "Ubrane", "Valkor", "Wendon", "Yarrow", "Oskerby", "Pellin", "Quarry Hill",
             "Rusk", "Saltmere", "Thornbury"),
    "job": ("baker", "surveyor", "potter", "clerk", "weaver", "miller", "carpenter", "nurse", "sailor",
            "teacher", "chemist", "printer"),
    "employer": ("Harlow Mills", "Brightwater Press", "Kestrel Shipping", "Orchard Foods", "Granite Works",
                 "Silverline Rail", "Northgate Bank", "Amber Textiles", "Falcon Motors", "Ridge Pottery",
                 "Cobalt Labs", "Willow Bakery"),
    "school": ("Eastbrook University", "Fenwick College", "Graystone Institute", "Hollis University",
               "Ivory Hall College", "Juniper University", "Kingsmere College", "Larchmont University",
               "Maplecrest Institute", "Norwood College", "Oakridge University", "Penhallow College"),
}
OFF_TOPIC = (
    "def frobnicate(values):\n    return sorted(v * 2 for v in values if v % 3)\n",
    "Preheat the oven, whisk the eggs with sugar, fold in the flour and bake for forty minutes.",
    "The committee will meet on Tuesday to review the budget, the schedule and the parking rules.",
    "Stir the paint well before use; apply two thin coats and let each dry for four hours.",
)
_ONSETS = ("b", "br", "d", "dr", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "m")


@dataclasses.dataclass(frozen=True)
class Person:
  name: str
  pronoun: str
  city: str
  job: str
  employer: str
  school: str

  def fields(self) -> dict:
    return dict(dataclasses.asdict(self), possessive="his" if self.pronoun == "he" else "her")


def _word(rng: random.Random, syllables: int) -> str:
  return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def people(world: str, seed: int, count: int, taken: set[str] | None = None) -> list[Person]:
  """`count` people with distinct invented names (distinct from `taken`, which grows)."""
  rng = random.Random(f"yijax-world:{world}:{seed}")
  taken = set() if taken is None else taken
  out = []
  while len(out) < count:
    name = f"{_word(rng, rng.randint(1, 2)).capitalize()} {_word(rng, 2).capitalize()}"
    if name in taken:
      continue
    taken.add(name)
    out.append(Person(name, rng.choice(("he", "she")), *(rng.choice(POOLS[a]) for a in ATTRIBUTES)))
  return out


def biography(person: Person, rng: random.Random, held_out: bool = False) -> str:
  """A paraphrased biography stating every attribute once, in a random order, with a filler sentence."""
  values = person.fields()
  sentences = []
  for attribute in ATTRIBUTES:
    options = SENTENCES[attribute][-1:] if held_out else SENTENCES[attribute][:-1]
    sentences.append(rng.choice(options).format(**values))
  rng.shuffle(sentences)
  sentences.insert(rng.randrange(1, len(sentences) + 1), rng.choice(FILLERS).format(**values))
  text = " ".join(sentences)
  return text[0].upper() + text[1:]


def qa_text(person: Person, rng: random.Random) -> str:
  """Every attribute as "Q: question\\nA: answer" lines, in a random order."""
  attributes = list(ATTRIBUTES)
  rng.shuffle(attributes)
  return "\n".join(f"Q: {QUESTIONS[a].format(name=person.name)}\nA: {getattr(person, a)}" for a in attributes)


def qa_items(persons: list[Person], seed: int, tag: str, num_choices: int = 4) -> list[dict]:
  """Multiple-choice QA (context "Q: ...\\nA:", choices from the attribute's pool), one per person and attribute."""
  rng = random.Random(f"yijax-world-items:{tag}:{seed}")
  items = []
  for person in persons:
    for attribute in ATTRIBUTES:
      answer = getattr(person, attribute)
      distractors = rng.sample([v for v in POOLS[attribute] if v != answer], num_choices - 1)
      position = rng.randrange(num_choices)
      choices = distractors[:position] + [answer] + distractors[position:]
      items.append({"id": f"{tag}/{len(items)}", "group": attribute,
                    "context": f"Q: {QUESTIONS[attribute].format(name=person.name)}\nA:",
                    "choices": choices, "answer": position})
  return items


def corrupt(text: str, rng: random.Random) -> tuple[str, str]:
  """(corrupted text, kind): words shuffled, characters replaced by noise, or off-topic text."""
  kind = rng.choice(("shuffled", "noisy", "off_topic"))
  if kind == "shuffled":
    words = text.split()
    rng.shuffle(words)
    return " ".join(words), kind
  if kind == "noisy":
    return "".join(rng.choice("qxzjkv#%&@") if c != " " and rng.random() < 0.25 else c for c in text), kind
  return " ".join(rng.sample(OFF_TOPIC, 2)), kind


@dataclasses.dataclass
class Worlds:
  world_a: list[Person]  # pretraining people (QA seen for the first `a_qa_count`)
  a_qa_count: int
  world_b: list[Person]  # domain people (one biography of the first `b_intro_count` in pretraining)
  b_intro_count: int
  reference: list[Person]  # people of clean reference text for the quality scorer (never in the tasks)


def build(seed: int, world_a: int, world_b: int, a_qa_fraction: float = 0.75, b_intro_fraction: float = 0.3,
          reference: int = 100) -> Worlds:
  taken: set[str] = set()
  a = people("A", seed, world_a, taken)
  b = people("B", seed, world_b, taken)
  ref = people("reference", seed, reference, taken)
  return Worlds(a, int(round(a_qa_fraction * world_a)), b, int(round(b_intro_fraction * world_b)), ref)


def pretraining_texts(worlds: Worlds, seed: int, bios_per_person: int = 4) -> dict[str, list[str]]:
  """{"world_a_bios", "world_a_qa", "world_b_intro"}: the synthetic part of pretraining."""
  rng = random.Random(f"yijax-world-text:{seed}")
  bios = [biography(p, rng) for _ in range(bios_per_person) for p in worlds.world_a]
  qa = [qa_text(p, rng) for _ in range(2) for p in worlds.world_a[:worlds.a_qa_count]]
  intro = [biography(p, rng) for p in worlds.world_b[:worlds.b_intro_count]]
  return {"world_a_bios": bios, "world_a_qa": qa, "world_b_intro": intro}


def domain_texts(worlds: Worlds, seed: int, count: int, corrupt_fraction: float) -> tuple[list[str], list[str]]:
  """`count` world-B biographies cycling over the people; (texts, kinds) with kind "clean" or the corruption."""
  rng = random.Random(f"yijax-world-domain:{seed}")
  texts, kinds = [], []
  for index in range(count):
    text = biography(worlds.world_b[index % len(worlds.world_b)], rng)
    if rng.random() < corrupt_fraction:
      text, kind = corrupt(text, rng)
    else:
      kind = "clean"
    texts.append(text)
    kinds.append(kind)
  return texts, kinds


def validation_texts(persons: list[Person], seed: int, tag: str) -> list[str]:
  """One biography per person in the held-out paraphrases (held-out loss of a source)."""
  rng = random.Random(f"yijax-world-validation:{tag}:{seed}")
  return [biography(p, rng, held_out=True) for p in persons]
