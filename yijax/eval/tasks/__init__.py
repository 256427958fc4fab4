"""The offline evaluation battery: named tasks built from a seed, scored by one call.

  build_task("arith", seed=0) -> Task(name, kind, items | data)
  evaluate_tasks(config, params, tokenizer, ["arith", "facts", "bpb_code", "my_task.jsonl"], seed=0)
      -> {"arith": {"acc", "acc_norm", "acc_add", "acc_compare"}, "facts": {"acc", ..., "acc_k16"},
          "bpb_code": {"bits_per_byte", "loss"}, "my_task.jsonl": {"acc", "acc_norm"}}
  pretraining_sources(prepared_dir, tokenizer_path, seed) -> ["facts", "arith"]

| task        | kind            | built from                                  | default size  | chance |
|-------------|-----------------|---------------------------------------------|---------------|--------|
| bpb_docs    | bpb             | held-out python_docs text (all 8 KB)        | <= 128 KiB    | -      |
| bpb_code    | bpb             | held-out python_code text (seeded sample)   | <= 128 KiB    | -      |
| cloze_docs  | multiple choice | next held-out line among 4 (python_docs)    | <= 200 items  | 0.25   |
| cloze_code  | multiple choice | next held-out line among 4 (python_code)    | 200 items     | 0.25   |
| arith       | multiple choice | 2-3 digit addition (4) / comparison (2)     | 200 items     | 0.375  |
| induction   | induction       | random token spans, repeated                | 64 x 32 tokens| ~0     |
| facts       | multiple choice | invented capitals seen k = 0..16 times      | 6 x 20 items  | 0.25   |

Any other name that is a path to a JSONL file of lm-evaluation-harness-style
examples ({"context", "choices", "answer"[, "group"]}: ARC, HellaSwag, ...
exported to that format) is scored the same way as `yijax eval
--multiple_choice`. The builders live in corpus_tasks.py (held-out corpus),
synthetic.py (arith, facts, induction and their text), pretraining.py (the
text as prepared sources), registry.py (names, options, build_task) and
runner.py (scoring).
"""

from __future__ import annotations

from yijax.errors import ConfigError
from yijax.eval.tasks.base import Task
from yijax.eval.tasks.pretraining import pretraining_sources, with_shares
from yijax.eval.tasks.registry import (TASKS, build_task, check_options, file_task, is_task_file,  # noqa: F401
                                       known_options)
from yijax.eval.tasks.runner import evaluate_task, evaluate_tasks

__all__ = ["TASKS", "Task", "build_task", "evaluate_task", "evaluate_tasks", "pretraining_sources", "with_shares",
           "write_jsonl"]


def write_jsonl(task: Task, path: str) -> str:
  """A multiple-choice task's items as a JSONL file (for `yijax eval --multiple_choice` or lm-eval).

  Scored elsewhere, the cloze tasks need target delimiter "" (lm-eval's
  `target_delimiter: ""`); the battery applies it itself.
  """
  from yijax.eval.multiple_choice import write_records

  if task.kind != "multiple_choice":
    raise ConfigError(f"task {task.name!r} is {task.kind}, not multiple choice: it has no JSONL form")
  write_records(path, task.items)
  return path
