"""A seeded synthetic instruction set: short tasks whose answers a tiny model can learn on a CPU.

Each conversation is in the `messages` format, sometimes with a system prompt and sometimes with a
follow-up turn, so a model fine-tuned on it learns the chat format itself: the template's turns, answering
only after `<|im_start|>assistant`, and ending each answer with `<|im_end|>`. `conversations(n, seed)` is a
pure function of its arguments; train and held-out sets use different seeds.
"""

from __future__ import annotations

import random

WORDS = ("apple", "river", "stone", "cloud", "green", "light", "table", "music", "paper", "house", "water",
         "bread", "chair", "smile", "train", "plant", "glass", "sugar", "horse", "night")
SYSTEMS = ("You are a helpful assistant.", "Answer briefly.", "You are a careful assistant. Reply in one line.")


def _add(rng: random.Random) -> list[dict]:
  a, b = rng.randint(0, 20), rng.randint(0, 20)
  turns = [{"role": "user", "content": f"What is {a} plus {b}?"},
           {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
  if rng.random() < 0.3:
    c = rng.randint(0, 9)
    turns += [{"role": "user", "content": f"And plus {c}?"},
              {"role": "assistant", "content": f"{a + b} plus {c} is {a + b + c}."}]
  return turns


def _reverse(rng: random.Random) -> list[dict]:
  words = rng.sample(WORDS, rng.randint(2, 4))
  return [{"role": "user", "content": "Reverse the words: " + " ".join(words)},
          {"role": "assistant", "content": " ".join(reversed(words))}]


def _upper(rng: random.Random) -> list[dict]:
  words = rng.sample(WORDS, rng.randint(1, 3))
  return [{"role": "user", "content": "Write in capitals: " + " ".join(words)},
          {"role": "assistant", "content": " ".join(words).upper()}]


def _count(rng: random.Random) -> list[dict]:
  words = [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]
  n = len(words)
  return [{"role": "user", "content": "How many words are in: " + " ".join(words) + "?"},
          {"role": "assistant", "content": f"There {'is' if n == 1 else 'are'} {n} word{'' if n == 1 else 's'}."}]


def _repeat(rng: random.Random) -> list[dict]:
  word, times = rng.choice(WORDS), rng.randint(1, 4)
  turns = [{"role": "user", "content": f"Say {word} {times} times."},
           {"role": "assistant", "content": " ".join([word] * times)}]
  if rng.random() < 0.3:
    turns += [{"role": "user", "content": "Thank you!"},
              {"role": "assistant", "content": "You are welcome."}]
  return turns


TASKS = (_add, _reverse, _upper, _count, _repeat)


def conversations(count: int, seed: int = 0) -> list[list[dict]]:
  """`count` conversations of the tasks above (a fixed function of count and seed)."""
  rng = random.Random(seed)
  out = []
  for _ in range(count):
    turns = rng.choice(TASKS)(rng)
    if rng.random() < 0.4:
      turns = [{"role": "system", "content": rng.choice(SYSTEMS)}] + turns
    out.append(turns)
  return out
