"""Evaluators a training run builds from its config: dense task evaluation and per-source held-out losses.

Stability-gap curves (Guo et al. 2024) need the downstream tasks scored
many times during a run, not only at its end. A run config asks for it with

  eval.tasks              battery task names or JSONL paths (yijax/eval/tasks), scored in-process
                          with the run's tokenizer and logged as tasks/<name>/<metric>
  eval.tasks_every_steps  score them at evaluations whose step is a multiple of this (0 = at every
                          evaluation; it must be a multiple of eval.every_steps), and at the end
  eval.tasks_options      build / scoring options passed to evaluate_tasks (batch_size, add_bos, ...)
  eval.tasks_seed         the seed the battery builds its items from
  eval.source_losses      sources whose eval_split is scored on its own: loss/<source>
                          (a domain loss that does not change with the arm's mixture)

`evaluators_from_config` returns builders of these plus eval.multiple_choice's;
`yijax train` and the study runner's train stages pass them to the loop, which
builds each once from the run's `EvalContext` (model config, a scorer on the
run's mesh, the tokenizer loaded once, the data config) and calls the
evaluators at every `eval.every_steps` (so eval.batches must be > 0).
"""

from __future__ import annotations

import os

from yijax.models.config import ConfigError
from yijax.train import evaluation
from yijax.train.evaluation import EvalContext, Evaluator, EvaluatorBuilder


def _field(config, name: str, default):
  value = config.eval.get(name, default)
  return default if value is None else value


def _plain(value) -> dict:
  return value.to_dict() if hasattr(value, "to_dict") else dict(value or {})


def task_key(name: str) -> str:
  """tasks/<key>/...: a battery name as is, a JSONL path by its file name without extension."""
  return os.path.splitext(os.path.basename(name))[0] if name.endswith((".jsonl", ".json")) else name


def check(config) -> None:
  """The dense-evaluation fields must be able to run: errors name the field and the fix."""
  tasks, every = list(_field(config, "tasks", [])), int(_field(config, "tasks_every_steps", 0))
  sources = list(_field(config, "source_losses", []))
  if (tasks or sources) and config.eval.batches <= 0:
    raise ConfigError(f"eval.tasks / eval.source_losses run at the loop's evaluations, which need "
                      f"eval.batches > 0 (got {config.eval.batches}); set --config.eval.batches=1")
  if tasks and every and (not config.eval.every_steps or every % config.eval.every_steps):
    raise ConfigError(f"eval.tasks_every_steps={every} must be a multiple of eval.every_steps="
                      f"{config.eval.every_steps} (the loop only evaluates at those steps)")
  keys = [task_key(t) for t in tasks]
  if len(set(keys)) != len(keys):
    raise ConfigError(f"eval.tasks {tasks} give the same name twice ({keys}); rename a JSONL file")


def tasks_evaluator(config) -> EvaluatorBuilder | None:
  """Scores eval.tasks at the chosen evaluations: {"tasks/<name>/<metric>": value}."""
  names = list(_field(config, "tasks", []))
  if not names:
    return None
  from yijax.eval import tasks as battery

  every, seed = int(_field(config, "tasks_every_steps", 0)), int(_field(config, "tasks_seed", 0))
  options = _plain(_field(config, "tasks_options", {}))
  battery.check_options(options, extra=("batch_size", "max_len", "add_bos", "seq_len"))

  def build(context: EvalContext) -> Evaluator:
    def evaluate(params, step: int) -> dict:
      if every and step % every and step != context.total_steps:
        return {}
      results = battery.evaluate_tasks(context.model_config, params, context.tokenizer, names, seed=seed,
                                       scorer=context.scorer, **dict(options))
      return {f"tasks/{task_key(name)}/{metric}": float(value)
              for name, metrics in results.items() for metric, value in metrics.items()}

    return evaluate

  return build


def source_loss_evaluator(config) -> EvaluatorBuilder | None:
  """Held-out loss of each eval.source_losses source alone: {"loss/<source>": nats per token}."""
  sources = list(_field(config, "source_losses", []))
  if not sources:
    return None
  max_batches = config.eval.get("source_loss_batches", 0) or None

  def build(context: EvalContext) -> Evaluator:
    from yijax.data import pipeline

    # the same whole batches on every process (pipeline.eval_batches without a process split)
    scorers = {s: evaluation.held_out_evaluator(context, pipeline.eval_batches(
        context.data, context.data.eval_split, context.seq_len, context.eval_batch_size, max_batches,
        sources=[s]), local=False) for s in sources}

    def evaluate(params, step: int) -> dict:
      return {f"loss/{s}": float(evaluate_source(params, step)["loss"]) for s, evaluate_source in scorers.items()}

    return evaluate

  return build


def context_from_config(config, model_config=None, mesh=None, rules=None) -> EvalContext:
  """The EvalContext of a run config outside the loop (a study scoring a model at step 0): its model config
  (or the given one), its data and shapes, the tokenizer its prepared data names, a scorer on `mesh`."""
  from yijax import configlib
  from yijax.data import pipeline

  tokenizer_path = None
  if config.data.prepared_dir:
    tokenizer_path = (pipeline.read_manifest(config.data.prepared_dir).get("tokenizer") or {}).get("path")
  return evaluation.context(model_config or configlib.model_config(config), mesh, rules, data=config.data,
                            seq_len=config.train.seq_len, eval_batch_size=config.eval.batch_size,
                            total_steps=config.train.steps, tokenizer_path=tokenizer_path)


def build(builders, context: EvalContext) -> list[Evaluator]:
  """The evaluators of `builders` (evaluators_from_config's) for one context."""
  return [e for e in (b(context) for b in builders) if e is not None]


def evaluators_from_config(config) -> list[EvaluatorBuilder]:
  """Builders of every extra evaluator the run config asks for (multiple-choice files, tasks, source
  losses); the loop calls each once with the run's EvalContext."""
  check(config)
  out = []
  if config.eval.multiple_choice:
    from yijax.eval import multiple_choice

    out.append(multiple_choice.training_evaluator(list(config.eval.multiple_choice)))
  return out + [e for e in (tasks_evaluator(config), source_loss_evaluator(config)) if e is not None]
