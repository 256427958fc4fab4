"""The seven unlearning methods of Yao et al. (2024) as run-config overrides.

Every method trains on the forget chunks (data.chunked.source, factor -1);
the ascent + descent / KL methods pair each forget chunk with one chunk of a
retain set (in-distribution or general, factor +1); adversarial labels and
the KL methods read the frozen original model (train.reference_from).
"""

from __future__ import annotations

import dataclasses

from yijax.models.config import ConfigError

OBJECTIVES = "yijax.unlearning.objectives:"


@dataclasses.dataclass(frozen=True)
class Method:
  objective: str
  retain: str = ""         # the role of the paired retain set ("" = none)
  reference: bool = False  # reads the original model
  label: str = ""


METHODS: dict[str, Method] = {
    "ga": Method("gradient_ascent", label="gradient ascent"),
    "random_labels": Method("random_labels", label="random labels"),
    "adversarial": Method("adversarial_labels", reference=True, label="adversarial labels"),
    "ga_gd_in": Method("ascent_descent", "retain", label="ascent + descent (in-distribution)"),
    "ga_kl_in": Method("ascent_kl", "retain", True, label="ascent + KL (in-distribution)"),
    "ga_gd_general": Method("ascent_descent", "general_retain", label="ascent + descent (general)"),
    "ga_kl_general": Method("ascent_kl", "general_retain", True, label="ascent + KL (general)"),
}


def get(name: str) -> Method:
  if name not in METHODS:
    raise ConfigError(f"unknown unlearning method {name!r}; choose one of {', '.join(METHODS)}")
  return METHODS[name]


def steps_per_epoch(num_chunks: int, forget_rows: int) -> int:
  """Optimizer steps for one pass over `num_chunks` forget chunks at `forget_rows` per step."""
  if num_chunks <= 0 or forget_rows <= 0 or num_chunks % forget_rows:
    raise ConfigError(f"forget chunks ({num_chunks}) must be a positive multiple of the forget rows per step "
                      f"({forget_rows}), so every epoch is whole")
  return num_chunks // forget_rows


def run_overrides(name: str, original: str, lr: float, epochs: int, num_chunks: int, forget_rows: int,
                  sources: dict[str, str] | None = None) -> dict:
  """Dotted run-config overrides of one unlearning run of `original` (a model / run dir).

  forget_rows: forget chunks per optimizer step (the batch doubles when a retain chunk is paired).
  num_chunks: the first N forget chunks (an epoch = N / forget_rows steps), or 0: every forget chunk, the steps
  counted when the run starts (data.chunked.epochs).
  sources: {"forget", "retain", "general_retain"} -> prepared source names (default: the same).
  """
  method = get(name)
  sources = {"forget": "forget", "retain": "retain", "general_retain": "general_retain", **(sources or {})}
  paired = sources[method.retain] if method.retain else ""
  batch = forget_rows * (2 if paired else 1)
  return {
      "train.objective": OBJECTIVES + method.objective,
      "train.init_from": original,
      "train.reference_from": original if method.reference else "",
      "train.steps": epochs * steps_per_epoch(num_chunks, forget_rows) if num_chunks else 0,
      "data.chunked.epochs": 0.0 if num_chunks else float(epochs),
      "train.batch_size": batch,
      "data.sources": {sources["forget"]: 1.0},
      "data.chunked.enabled": True,
      "data.chunked.source": sources["forget"],
      "data.chunked.factor": -1.0,
      "data.chunked.paired_source": paired,
      "data.chunked.paired_factor": 1.0,
      "data.chunked.num_chunks": num_chunks,
      "optimizer.lr": lr,
  }
