"""A corpus with planted exact and near duplicates at known edit rates, to measure deduplication.

Originals are seeded English-like prose (sentences over a word list, paragraphs, terminal punctuation)
that passes the default heuristic rules; copies are exact (edit rate 0) or have a given fraction of their
words substituted, inserted or deleted. Every copy carries `dup_of` (its original's id) and `edit_rate`,
the truth `yijax curate` scores its deduplication against (report.json `dedup_quality`).

  python -m yijax.curate.planted OUT.jsonl [--originals=N]
"""

from __future__ import annotations

import argparse
import json
import random

_FUNCTION = ("the of and to in a is that for it as was with be by on not he this are or his from at which but "
             "have an they you were her she there been one all we their has would when if more will who so no").split()
_CONTENT = ("river mountain village garden teacher market winter summer harbor library engine science history "
            "language number window kitchen forest island station letter morning evening journey family doctor "
            "farmer painter music theory method system energy water light stone bridge road city country people "
            "student problem answer question season weather animal bird flower tree field ocean valley castle "
            "machine signal report voice memory story planet orbit measure record museum printer canal meadow "
            "lantern compass harvest ribbon silver copper marble velvet thunder whisper shadow candle blanket "
            "careful quiet bright ancient narrow gentle heavy simple modern distant curious patient sudden steady "
            "walked carried opened built studied followed noticed explained returned gathered described measured").split()
_VOCAB = _FUNCTION + _CONTENT


def _sentence(rng: random.Random) -> str:
  words = [rng.choice(_FUNCTION) if rng.random() < 0.4 else rng.choice(_CONTENT) for _ in range(rng.randint(9, 16))]
  return " ".join(words).capitalize() + rng.choice(".....!?")


def original(rng: random.Random) -> str:
  paragraphs = []
  for _ in range(rng.randint(3, 5)):
    paragraphs.append("\n".join(" ".join(_sentence(rng) for _ in range(rng.randint(2, 3)))
                                for _ in range(rng.randint(2, 4))))
  return "\n\n".join(paragraphs)


def edit(text: str, rate: float, rng: random.Random) -> str:
  """Changes about `rate` of the words (substitute 1/2, insert 1/4, delete 1/4), keeping the line layout."""
  lines = []
  for line in text.split("\n"):
    out = []
    for word in line.split(" "):
      if word and rng.random() < rate:
        kind = rng.random()
        if kind < 0.5:
          out.append(rng.choice(_VOCAB))
        elif kind < 0.75:
          out += [word, rng.choice(_VOCAB)]
        continue
      out.append(word)
    lines.append(" ".join(out))
  return "\n".join(lines)


def build(originals: int = 60, rates=(0.0, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3), copies_per_rate: int = 1,
          seed: int = 0) -> list[dict]:
  """Documents: every original, and copies at each edit rate of distinct originals (about half of them)."""
  rng = random.Random(seed)
  docs = [{"id": f"orig-{i:05d}", "text": original(rng)} for i in range(originals)]
  sources = rng.sample(range(originals), originals)
  copies = []
  for index, rate in enumerate(rates):
    per_rate = copies_per_rate * max(originals // (2 * len(rates)), 1)
    for j in range(per_rate):
      source = docs[sources[(index * per_rate + j) % originals]]
      copies.append({"id": f"copy-{rate:g}-{j:04d}", "text": source["text"] if rate == 0 else edit(source["text"], rate, rng),
                     "dup_of": source["id"], "edit_rate": rate})
  mixed = docs + copies
  rng.shuffle(mixed)
  return mixed


def write(path: str, docs: list[dict]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for doc in docs:
      f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--originals", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  docs = build(args.originals, seed=args.seed)
  write(args.out, docs)
  print(f"{len(docs)} documents ({sum('dup_of' in d for d in docs)} planted copies) -> {args.out}")


if __name__ == "__main__":
  main()
