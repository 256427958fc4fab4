"""Seeded synthetic worlds of invented people: biographies, question-answer text, corrupted documents, QA items.

The stability-gap study (experiments/stability_gap) needs a start model that
already knows the domain's question format and part of the domain, so that a
dip in domain accuracy can appear when continual pretraining begins:

  world A  people whose biographies (several paraphrases each) are pretraining
           data, and whose question-answer text ("Q: Where was X born?\nA: Y")
           is pretraining data for the first `a_qa_count` of them; the QA of the
           rest is never trained on (held-out world-A QA: extracting a fact seen
           only in prose, in the QA format)
  world B  the domain. Its known half (`b_known_count` people) gets a couple of
           biographies each in pretraining (the start model can answer their
           QA by extraction); its unknown half never appears in pretraining.
           The domain corpus is biographies of all of world B in another
           register (`register="registry"`: archival records rather than
           narrative prose), never in QA form; the domain task is their QA.

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
# the domain register: archival records about the same facts (the last of each is held out)
REGISTRY = {
    "city": ("The parish registry records the birth of {name} in {city}.",
             "Census returns give {city} as the birthplace of {name}.",
             "Archive entry: {name}, native of {city}.",
             "Civil records place the birth of {name} in {city}."),
    "job": ("Census returns list the occupation of {name} as {job}.",
            "The trade directory enters {name} under {job}.",
            "Archive entry: {name}, occupation {job}.",
            "Tax rolls describe {name} as a {job} by profession."),
    "employer": ("Payroll ledgers of {employer} carry the name of {name}.",
                 "The staff register of {employer} includes {name}.",
                 "Archive entry: {name}, in the employ of {employer}.",
                 "Pension files show {name} as a former employee of {employer}."),
    "school": ("The matriculation roll of {school} lists {name}.",
               "Degree records of {school} name {name} among the graduates.",
               "Archive entry: {name}, alumnus of {school}.",
               "Enrolment files of {school} contain an entry for {name}."),
}
REGISTRY_FILLERS = ("The file on {name} was catalogued in the county archive.",
                    "Further papers of {name} are held in a private collection.",
                    "The entry for {name} was checked against church records.",
                    "A later hand annotated the record of {name}.")
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
REGISTERS = {"narrative": (None, None), "registry": (REGISTRY, REGISTRY_FILLERS)}
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


def biography(person: Person, rng: random.Random, held_out: bool = False, register: str = "narrative") -> str:
  """A paraphrased biography stating every attribute once, in a random order, with a filler sentence, in the
  narrative register (pretraining) or the registry register (the domain corpus)."""
  if register not in REGISTERS:
    raise ValueError(f"register {register!r} is not one of {sorted(REGISTERS)}")
  templates, fillers = REGISTERS[register]
  templates, fillers = templates or SENTENCES, fillers or FILLERS
  values = person.fields()
  sentences = []
  for attribute in ATTRIBUTES:
    options = templates[attribute][-1:] if held_out else templates[attribute][:-1]
    sentences.append(rng.choice(options).format(**values))
  rng.shuffle(sentences)
  sentences.insert(rng.randrange(1, len(sentences) + 1), rng.choice(fillers).format(**values))
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
  world_b: list[Person]  # domain people (biographies of the first `b_known_count` in pretraining)
  b_known_count: int
  reference: list[Person]  # people of clean reference text for the quality scorer (never in the tasks)

  @property
  def a_trained(self) -> list[Person]:
    return self.world_a[:self.a_qa_count]

  @property
  def a_held_out(self) -> list[Person]:
    return self.world_a[self.a_qa_count:]

  @property
  def b_known(self) -> list[Person]:
    return self.world_b[:self.b_known_count]

  @property
  def b_unknown(self) -> list[Person]:
    return self.world_b[self.b_known_count:]


def build(seed: int, world_a: int, world_b: int, a_qa_fraction: float = 0.75, b_known_fraction: float = 0.5,
          reference: int = 100) -> Worlds:
  taken: set[str] = set()
  a = people("A", seed, world_a, taken)
  b = people("B", seed, world_b, taken)
  ref = people("reference", seed, reference, taken)
  return Worlds(a, int(round(a_qa_fraction * world_a)), b, int(round(b_known_fraction * world_b)), ref)


def pretraining_texts(worlds: Worlds, seed: int, bios_per_person: int = 4, qa_per_person: int = 2,
                      intro_bios: int = 2) -> dict[str, list[str]]:
  """{"world_a_bios", "world_a_qa", "world_b_intro"}: the synthetic part of pretraining (narrative register);
  world_b_intro is `intro_bios` biographies of each person of world B's known half."""
  rng = random.Random(f"yijax-world-text:{seed}")
  bios = [biography(p, rng) for _ in range(bios_per_person) for p in worlds.world_a]
  qa = [qa_text(p, rng) for _ in range(qa_per_person) for p in worlds.a_trained]
  intro = [biography(p, rng) for _ in range(intro_bios) for p in worlds.b_known]
  return {"world_a_bios": bios, "world_a_qa": qa, "world_b_intro": intro}


def domain_texts(worlds: Worlds, seed: int, count: int, corrupt_fraction: float,
                 register: str = "registry") -> tuple[list[str], list[str], list[int]]:
  """`count` world-B biographies cycling over the people, in `register`; (texts, kinds, person index) with
  kind "clean" or the corruption."""
  rng = random.Random(f"yijax-world-domain:{seed}")
  texts, kinds, who = [], [], []
  for index in range(count):
    who.append(index % len(worlds.world_b))
    text = biography(worlds.world_b[who[-1]], rng, register=register)
    if rng.random() < corrupt_fraction:
      text, kind = corrupt(text, rng)
    else:
      kind = "clean"
    texts.append(text)
    kinds.append(kind)
  return texts, kinds, who


def validation_texts(persons: list[Person], seed: int, tag: str, register: str = "narrative",
                     per_person: int = 1) -> list[str]:
  """`per_person` biographies per person in the held-out paraphrases (held-out loss of a source)."""
  rng = random.Random(f"yijax-world-validation:{tag}:{seed}")
  return [biography(p, rng, held_out=True, register=register) for _ in range(per_person) for p in persons]
