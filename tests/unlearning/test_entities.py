"""The entity-level unlearning setting's people, documents, QA items and injection mixtures."""

import ml_collections
import pytest

from yijax.errors import DataError
from yijax.unlearning import entities

ARGS = dict(seed=0, world_a=6, forget=3, retain=5, approximate=3, bios_per_person=2, a_bios_per_person=1,
            a_qa_per_person=1, retain_eval_people=2, prose_budgets={"general_retain": 2000, "general_eval": 2000,
                                                                    "other_prose": 2000},
            prose_doc_bytes=[500, 40000])


def test_sets_are_disjoint_people_with_their_biographies_and_questions():
  sets, tasks = entities.document_sets(ml_collections.ConfigDict(ARGS))
  again, _ = entities.document_sets(ml_collections.ConfigDict(ARGS))
  assert sets == again  # a pure function of the arguments
  names = {name: {doc_id.split("/")[0] for doc_id, _ in sets[name]} for name in ("forget", "retain", "approximate")}
  assert [len(names[n]) for n in ("forget", "retain", "approximate")] == [3, 5, 3]
  assert not (names["forget"] & names["retain"]) and not (names["approximate"] & (names["forget"] | names["retain"]))
  assert len(sets["forget"]) == 3 * 2 and all(doc_id.split("/")[0] in text for doc_id, text in sets["forget"])
  assert {i["context"].split("\n")[0] for i in tasks["forget_qa"]} <= {
      q for n in names["forget"] for q in (f"Q: Where was {n} born?", f"Q: What did {n} work as?",
                                           f"Q: Which company did {n} work for?", f"Q: Which university did {n} attend?")}
  assert len(tasks["forget_qa"]) == 3 * 4 and len(tasks["retain_qa"]) == 2 * 4 and len(tasks["approximate_qa"]) == 12
  assert sets["prose"] == sets["general_retain"] + sets["other_prose"]
  assert not {d for d, _ in sets["general_eval"]} & {d for d, _ in sets["prose"]}
  with pytest.raises(DataError, match="retain_eval_people=9 exceeds the 5 retain people"):
    entities.document_sets(ml_collections.ConfigDict(dict(ARGS, retain_eval_people=9)))


def test_gold_injection_reads_the_same_retain_qa_and_prose_tokens():
  original, one = entities.injection_sources(32, 160, 0.6, 0.2)
  gold, factor = entities.injection_sources(32, 160, 0.6, 0.2, gold=True)
  assert one == 1.0 and sum(original.values()) == pytest.approx(1.0) and sum(gold.values()) == pytest.approx(1.0)
  assert original["forget"] == pytest.approx(0.1) and "forget" not in gold and factor == pytest.approx(0.9)
  for source in ("retain", "world_a_qa", "prose"):  # share x steps: the same tokens of each source
    assert gold[source] * factor == pytest.approx(original[source])
