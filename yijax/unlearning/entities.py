"""The entity-level unlearning setting: forget what a model learned about a few dozen people.

A model learns facts about many synthetic people (yijax/data/synthetic_worlds.py) in two phases:

  pretraining      prose of the embedded corpus (`prose`), biographies of "world A" people and their
                   question-answer text (`world_a_bios`, `world_a_qa`): the QA format and the skill of
                   answering a question about a person known only from prose
  knowledge        biographies of the target people, `bios_per_person` paraphrases each (`forget` +
  injection        `retain`), mixed with world-A QA and prose so the format stays

The gold model is the same injection without the forget people (retraining from the shared pretrained
model is retraining from scratch: the forget people appear in no other data). The sets:

  forget          the forget people's biographies (exactly the injected documents): unlearned, MIA members
  retain          the other injected people's biographies (the in-distribution retain set)
  approximate     biographies of never-seen people from the same generator (MIA non-members)
  general_retain  prose in pretraining (the general retain set); general_eval: prose never trained on
  tasks           forget_qa / retain_qa / approximate_qa: multiple-choice QA about each person's
                  attributes ("Q: Where was X born?\\nA:"), the facts the biographies state

Every function is a pure function of its arguments (people and texts seeded by strings).
"""

from __future__ import annotations

import random

from yijax.data import synthetic_worlds as worlds
from yijax.errors import DataError
from yijax.unlearning import splits

PERSON_SETS = ("forget", "retain", "approximate")
TASKS = ("forget_qa", "retain_qa", "approximate_qa")


def people(seed: int, world_a: int, forget: int, retain: int, approximate: int) -> dict[str, list]:
  """{"world_a", "forget", "retain", "approximate"}: distinct invented people."""
  taken: set[str] = set()
  a = worlds.people("unlearning-A", seed, world_a, taken)
  targets = worlds.people("unlearning-T", seed, forget + retain + approximate, taken)
  return {"world_a": a, "forget": targets[:forget], "retain": targets[forget:forget + retain],
          "approximate": targets[forget + retain:]}


def _bios(persons, rng: random.Random, per_person: int) -> list[tuple[str, str]]:
  return [(f"{p.name}/{i}", worlds.biography(p, rng)) for i in range(per_person) for p in persons]


def document_sets(args) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[dict]]]:
  """({set: [(doc_id, text)]}, {task: items}) of the entity setting.

  args: seed, world_a, forget, retain, approximate (people), bios_per_person, a_bios_per_person,
  a_qa_per_person, retain_eval_people (retain people asked about in retain_qa), prose_budgets
  {general_retain, general_eval, other_prose} (bytes of embedded prose), prose_doc_bytes (min, max).
  """
  seed = int(args.seed)
  crowd = people(seed, int(args.world_a), int(args.forget), int(args.retain), int(args.approximate))
  if int(args.retain_eval_people) > len(crowd["retain"]):
    raise DataError(f"retain_eval_people={args.retain_eval_people} exceeds the {len(crowd['retain'])} retain people")
  rng = random.Random(f"yijax-unlearning-entities:{seed}")
  sets = {name: _bios(crowd[name], rng, int(args.bios_per_person)) for name in PERSON_SETS}
  sets["world_a_bios"] = _bios(crowd["world_a"], rng, int(args.a_bios_per_person))
  sets["world_a_qa"] = [(f"{p.name}/qa{i}", worlds.qa_text(p, rng)) for i in range(int(args.a_qa_per_person))
                        for p in crowd["world_a"]]
  budgets = dict(args.prose_budgets)
  prose = splits.embedded_prose(budgets, tuple(args.prose_doc_bytes))
  sets.update(prose)
  sets["prose"] = prose["general_retain"] + prose["other_prose"]
  tasks = {"forget_qa": worlds.qa_items(crowd["forget"], seed, "forget"),
           "retain_qa": worlds.qa_items(crowd["retain"][:int(args.retain_eval_people)], seed, "retain"),
           "approximate_qa": worlds.qa_items(crowd["approximate"], seed, "approximate")}
  return sets, tasks


def injection_sources(num_forget: int, num_retain: int, bios_share: float, qa_share: float,
                      gold: bool = False) -> tuple[dict[str, float], float]:
  """(data.sources, steps factor) of the knowledge-injection phase. The biographies take `bios_share` of the
  tokens, split between forget and retain by their people; world-A QA `qa_share`; prose the rest. The gold
  mixture drops the forget share and runs (1 - forget share) of the steps, so it reads the same retain, QA
  and prose tokens as the original."""
  forget_share = bios_share * num_forget / (num_forget + num_retain)
  sources = {"forget": forget_share, "retain": bios_share - forget_share, "world_a_qa": qa_share,
             "prose": 1.0 - bios_share - qa_share}
  if not gold:
    return sources, 1.0
  del sources["forget"]
  total = sum(sources.values())
  return {k: v / total for k, v in sources.items()}, total
