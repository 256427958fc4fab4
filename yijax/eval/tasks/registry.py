"""The battery's task names and their builders: build_task, the options each takes, JSONL task files."""

from __future__ import annotations

import inspect
import os
from typing import Callable

from yijax.errors import ConfigError
from yijax.eval import multiple_choice
from yijax.eval.tasks import corpus_tasks, synthetic
from yijax.eval.tasks.base import Task

TASKS: dict[str, Callable[..., Task]] = {
    "bpb_docs": corpus_tasks.build_bpb,
    "bpb_code": corpus_tasks.build_bpb,
    "cloze_docs": corpus_tasks.build_cloze,
    "cloze_code": corpus_tasks.build_cloze,
    "arith": synthetic.build_arith,
    "induction": synthetic.build_induction,
    "facts": synthetic.build_facts,
}

def is_task_file(name_or_path: str) -> bool:
  """A JSONL task given by path (an existing file, or any name ending in .jsonl)."""
  return name_or_path.endswith((".jsonl", ".json")) or os.path.isfile(name_or_path)


def file_task(path: str) -> Task:
  """An lm-evaluation-harness-style JSONL file (context, choices, answer[, group]) as a task."""
  return Task(path, "multiple_choice", items=multiple_choice.load_tasks(path), add_bos=False,
              description=f"multiple choice from {path}")


def _accepted(builder: Callable) -> set[str]:
  return set(inspect.signature(builder).parameters) - {"name", "seed", "tokenizer"}


def known_options() -> set[str]:
  """Every build option some battery task takes."""
  return set().union(*(_accepted(b) for b in TASKS.values()))


def check_options(options: dict, extra=()) -> None:
  """An option no task (and no scorer in `extra`) takes is a typo: name it and the valid ones."""
  unknown = sorted(set(options) - known_options() - set(extra))
  if unknown:
    raise ConfigError(f"unknown task option(s) {unknown}; valid: {', '.join(sorted(known_options() | set(extra)))}")


def build_task(name: str, seed: int = 0, tokenizer=None, _lenient: bool = False, **options) -> Task:
  """The task `name` (a battery name or a JSONL path) built from `seed`.

  Options a builder does not take are an error (ignored with _lenient, as
  evaluate_tasks passes one option set to every task). `tokenizer` is only
  read by induction (its ordinary piece ids and BOS).
  """
  if name not in TASKS:
    if is_task_file(name):
      return file_task(name)
    raise ConfigError(f"unknown task {name!r}: choose from {', '.join(TASKS)} or give a path to a JSONL file "
                     "of {\"context\", \"choices\", \"answer\"} examples")
  builder = TASKS[name]
  accepted = _accepted(builder)
  if not _lenient:
    rejected = sorted(set(options) - accepted)
    if rejected:
      raise ConfigError(f"task {name!r} takes no option(s) {rejected}; its options: {', '.join(sorted(accepted))}")
  kwargs = {k: v for k, v in options.items() if k in accepted}
  if "tokenizer" in inspect.signature(builder).parameters:
    kwargs["tokenizer"] = tokenizer
  return builder(name, seed, **kwargs)


