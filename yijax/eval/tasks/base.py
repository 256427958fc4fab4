"""The Task record every battery builder returns, and the seeded randomness they share.

Builders are pure functions of (seed, options): the same seed gives the same
items on every machine, because every random choice comes from a
`random.Random` seeded with a string (hashed with SHA-512 by Python, not by
the per-process `hash`) or a numpy generator seeded with integers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import zlib
from typing import Any

import numpy as np

from yijax.errors import ConfigError

KINDS = ("multiple_choice", "bpb", "induction")


@dataclasses.dataclass
class Task:
  """One evaluation task, built and ready to score.

  kind: "multiple_choice" (items: dicts with context, choices, answer and
  optionally group, scored as lm-evaluation-harness scores them), "bpb"
  (data: [{"doc", "text"}] held-out text pieces, scored in bits per byte) or
  "induction" (data: int32 [sequences, 1 + 2 * span] token ids, each a random
  span repeated; scored by greedy copy accuracy on the repeat).
  """

  name: str
  kind: str
  items: list[dict] = dataclasses.field(default_factory=list)
  data: Any = None
  target_delimiter: str = " "  # put between context and choice (lm-eval's default " ")
  add_bos: bool = True  # default BOS on multiple-choice contexts (overridable at evaluation)
  description: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ConfigError(f"Task {self.name!r}: kind={self.kind!r} must be one of {', '.join(KINDS)}")

  @property
  def chance(self) -> float | None:
    """Expected accuracy of a uniform guess (multiple choice: mean 1 / choices; induction: None)."""
    if self.kind != "multiple_choice" or not self.items:
      return None
    return float(np.mean([1.0 / len(item["choices"]) for item in self.items]))

  def group_chance(self) -> dict[str, float]:
    """{group: chance} for items carrying a "group" field."""
    groups: dict[str, list[float]] = {}
    for item in self.items:
      if "group" in item:
        groups.setdefault(str(item["group"]), []).append(1.0 / len(item["choices"]))
    return {g: float(np.mean(v)) for g, v in groups.items()}


def rng_for(name: str, seed: int) -> random.Random:
  """A Python RNG private to (task name, seed); identical on every machine and Python run."""
  return random.Random(f"yijax-task:{name}:{int(seed)}")


def np_rng_for(name: str, seed: int) -> np.random.Generator:
  return np.random.default_rng([zlib.crc32(name.encode()), int(seed) % 2**32])


def stable_fraction(key: str) -> float:
  """sha256(key) as a number in [0, 1): a machine-independent coin for train/eval splits."""
  return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def place_answer(rng: random.Random, answer: str, distractors: list[str]) -> tuple[list[str], int]:
  """Choices with the answer at a uniformly random position; returns (choices, answer index)."""
  position = rng.randrange(len(distractors) + 1)
  choices = list(distractors)
  choices.insert(position, answer)
  return choices, position
