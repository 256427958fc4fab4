"""The training loop: a run is a directory, and rerunning the same command resumes it.

WORKDIR/config.json          the resolved run config
WORKDIR/tokenizer.model      the tokenizer the data was prepared with
WORKDIR/metrics.jsonl        one JSON object per step (step, loss, grad_norm, lr, tokens/s, MFU...)
WORKDIR/eval.jsonl           held-out loss / perplexity / bits per byte at each evaluation
WORKDIR/tensorboard/         the same as TensorBoard events
WORKDIR/checkpoints/<step>/  orbax composite checkpoints (see checkpoint.py)

WORKDIR is a local path (a shared mount on a multi-host run) or a gs:// URL.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from typing import Any, Sequence

import jax
import numpy as np

from yijax import paths, sharding
from yijax.train import checkpoint as ckpt_lib
from yijax.train import flops, metrics as metrics_lib, optimizer as opt_lib, params_io, step as step_lib
from yijax.train import evaluation, layerwise, validation
from yijax.errors import CheckpointMismatchError, YijaxError

log = logging.getLogger(__name__)

EvaluatorBuilder = evaluation.EvaluatorBuilder


class TrainingHalted(YijaxError, RuntimeError):
  """Too many non-finite steps in a row; the last good checkpoint is intact."""


class _Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def _restore_newest_good(checkpointer, abstract, shardings, logical, iterator):
  """(step, state, meta) of the newest checkpoint that reads and verifies, or None when there is none.
  A damaged newest step is set aside (WORKDIR/damaged_checkpoints/, never deleted) with one line saying
  which and why, and the next older one is tried."""
  from yijax.data import pipeline

  target = lambda tree, shard: jax.tree.map(  # noqa: E731
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shard)
  for step in reversed(checkpointer.all_steps()):
    try:
      params, opt_state, saved_meta, data_state = checkpointer.restore(
          step, target(abstract.params, shardings.params),
          target((abstract.opt_state, abstract.step, abstract.rng),
                 (shardings.opt_state, shardings.step, shardings.rng)), logical)
    except CheckpointMismatchError:
      raise  # a checkpoint of another model config: a config error, not damage
    except params_io.CheckpointError as e:
      where = checkpointer.set_aside(step, str(e))
      log.info(f"skipping damaged checkpoint step {step}: {e} (moved to {where})")
      continue
    pipeline.restore_iterator(iterator, data_state)
    opt_state, step_count, rng = opt_state
    return step, step_lib.TrainState(step_count, params, opt_state, rng), saved_meta
  return None


def _batch_to_device(batch: dict, data_sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(data_sharding, np.asarray(v)) for k, v in batch.items()}


def train(config, workdir: str, evaluators: Sequence[EvaluatorBuilder] = ()) -> dict:
  """Runs (or resumes) the run in `workdir`; returns the last metrics and evals. evaluators: builders, each
  called once with the run's `evaluation.EvalContext` (its scorer is on the run's mesh), returning an
  evaluator (params, step) -> metrics or None (`yijax.eval.dense.evaluators_from_config` gives a run
  config's)."""
  run = _Run()
  try:
    run.set_up(config, workdir, evaluators)
    return run.train()
  finally:
    run.close()


class _Run:
  """One invocation of a run, as named steps: set up (checks, directories, optimizer, data, state: fresh or
  resumed), then calls of k train steps with their bookkeeping, evaluations and checkpoints between calls."""

  def set_up(self, config, workdir: str, evaluators: Sequence[EvaluatorBuilder]) -> None:
    self.config, self.builders = config, evaluators
    self._start_distributed()
    self._check_and_record(workdir)
    self._build_optimizer_and_data()
    self._restore_or_initialize()
    self._build_evaluation()
    self.writer = metrics_lib.MetricsWriter(self.workdir, self.start,
                                            tensorboard=bool(config.train.get("tensorboard", True)))
    self.progress = metrics_lib.Progress(config.train.steps, self.start, config.train.progress_bar)
    self.throughput = metrics_lib.Throughput()
    self.per_token_flops = flops.train_flops_per_token(self.model_config, config.train.seq_len)
    self.last: dict = {}

  # ---------------------------------------------------------------- set-up steps

  def _start_distributed(self) -> None:
    d = self.config.distributed
    sharding.maybe_initialize_distributed(d.enabled, d.coordinator_address or None, d.num_processes or None,
                                          d.process_id if d.process_id >= 0 else None)

  def _check_and_record(self, workdir: str) -> None:
    """Everything that can fail before compiling; then the run dir with its config and tokenizer."""
    config = self.config
    paths.check_output_dir(paths.resolve(workdir), "--workdir")
    # the data is resolved (the default data prepared) before the run dir gets anything
    from yijax.data import chunked

    epochs = chunked.resolve_epochs(config)
    if epochs:
      log.info(f"data.chunked.epochs: {epochs}")
    self.plan = validation.resolve_data(config, validation.check_run_config(config))
    self.model_config, self.mesh, self.rules = self.plan.model_config, self.plan.mesh, self.plan.rules
    self.data = self.plan.data
    self.workdir = paths.resolve(workdir)
    paths.makedirs(self.workdir)
    self.recorded_config = config.copy_and_resolve_references()  # as given, with the data it reads
    with self.recorded_config.unlocked():
      self.recorded_config.data = self.data
    if jax.process_index() == 0:
      paths.write_text(paths.join(self.workdir, "config.json"),
                       self.recorded_config.to_json_best_effort(indent=2, sort_keys=True))
      if self.plan.tokenizer_path and not paths.exists(paths.join(self.workdir, params_io.TOKENIZER)):
        paths.copy_file(self.plan.tokenizer_path, paths.join(self.workdir, params_io.TOKENIZER))
    logging.info("resolved config:\n%s", config)

  def _build_optimizer_and_data(self) -> None:
    from yijax.data import chunked, pipeline

    config = self.config
    self.optimizer, self.schedule = opt_lib.make_optimizer(config.optimizer, config.train.steps)
    self.abstract, self.shardings, self.logical = step_lib.state_shardings(
        self.model_config, self.optimizer, self.mesh, self.rules, config.train.seed)
    self.checkpointer = ckpt_lib.RunCheckpointer(self.workdir, config.checkpoint, config.train.steps)
    self.data_sharding = sharding.data_sharding(self.mesh, self.rules)
    self.stacked_sharding = sharding.stacked(self.data_sharding)
    per_process = config.train.batch_size // jax.process_count()
    if self.plan.sft is not None:
      from yijax.data import sft as sft_data

      self.iterator = sft_data.train_iterator(self.data, self.plan.sft.train, config.train.seq_len, per_process,
                                              config.train.seed)
      return
    make_iterator = chunked.train_iterator if chunked.enabled(self.data) else pipeline.train_iterator
    self.iterator = make_iterator(self.data, config.train.seq_len, per_process, config.train.seed)

  def _restore_or_initialize(self) -> None:
    """The newest good checkpoint (and its data position), or fresh parameters (init_from: given ones)."""
    from yijax.data import pipeline

    config = self.config
    self.meta = {"tokens_seen": 0, "nonfinite_total": 0, "nonfinite_in_a_row": 0}
    resumed = _restore_newest_good(self.checkpointer, self.abstract, self.shardings, self.logical, self.iterator)
    self.resumed = resumed is not None
    if resumed is not None:
      self.start, self.state, saved_meta = resumed
      self.meta.update(saved_meta)
      log.info(f"resumed {self.workdir} at step {self.start} ({self.meta['tokens_seen']:,} tokens seen)")
    else:
      params = None
      if config.train.init_from:
        params = _load_initial_params(config.train.init_from, self.model_config, self.shardings.params,
                                      self.abstract, self.logical)
        log.info(f"initialized from {config.train.init_from}")
      if config.train.get("init_data_state_from"):
        pipeline.restore_iterator(self.iterator, ckpt_lib.read_data_state(
            config.train.init_data_state_from, jax.process_index(), jax.process_count()))
        log.info(f"data stream continues from {config.train.init_data_state_from}")
      self.start = 0
      self.state = step_lib.init_state(self.model_config, self.optimizer, self.mesh, self.rules, config.train.seed,
                                       params)
    self.start = int(self.start)
    self.end = config.train.steps if not config.train.stop_after else min(
        config.train.steps, self.start + config.train.stop_after)
    self.freeze = None
    if config.optimizer.freeze_layers:
      self.freeze = layerwise.freeze_mask(self.model_config, self.abstract.params, config.optimizer.freeze_layers)
    self.reference = None
    if config.train.reference_from:
      self.reference = _load_initial_params(config.train.reference_from, self.model_config, self.shardings.params,
                                            self.abstract, self.logical)
    self.growth = BatchGrowth(config, self.meta)
    self.step_fns: dict[tuple[int, int], Any] = {}
    self.steps_per_call = int(config.train.get("steps_per_call", 1) or 1)

  def _build_evaluation(self) -> None:
    """The run's EvalContext (a scorer on its mesh), its held-out evaluator and the builders' evaluators."""
    from yijax.data import pipeline

    config = self.config
    self.eval_context = evaluation.context(
        self.model_config, self.mesh, self.rules, data=self.data, seq_len=config.train.seq_len,
        eval_batch_size=config.eval.batch_size, total_steps=config.train.steps,
        tokenizer_path=self.plan.tokenizer_path, token_bytes=self.plan.token_bytes)
    self.evaluate = None
    if self.plan.sft is not None:
      if config.eval.batches > 0 and self.plan.sft.eval is not None:
        from yijax.data import sft as sft_data
        from yijax.train import sft

        batches = sft_data.eval_batches(self.plan.sft.eval, config.train.seq_len, config.eval.batch_size,
                                        config.eval.batches, bool(self.data.sft.pack))
        self.evaluate = sft.held_out_evaluator(self.eval_context, batches)
    elif config.eval.batches > 0:
      batches = pipeline.eval_batches(self.data, self.data.eval_split, config.train.seq_len,
                                      evaluation.process_rows(config.eval.batch_size), config.eval.batches,
                                      process_index=jax.process_index(), process_count=jax.process_count())
      if batches:
        self.evaluate = evaluation.held_out_evaluator(self.eval_context, batches, local=True)
    if config.eval.relative_update_k and self.evaluate is not None:
      initial = _initial_params(config, self.model_config, self.optimizer, self.mesh, self.rules, self.shardings,
                                self.abstract, self.logical, None if self.resumed else self.state)
      # kept on the devices, in the params' sharding (the train step donates the state's own buffers)
      initial = jax.tree.map(lambda x: x.copy(), initial)
      self.evaluate = _with_relative_update(self.evaluate, self.model_config, initial,
                                            config.eval.relative_update_k)
    self.evaluators = [e for e in (build(self.eval_context) for build in self.builders) if e is not None]
    self.eval_due = _eval_schedule(config) if self.evaluate else (lambda step: False)

  # ---------------------------------------------------------------- the loop

  def _budget_spent(self) -> bool:
    """train.max_tokens reached: the run ends at this step as it would at train.steps."""
    budget = int(self.config.train.get("max_tokens", 0) or 0)
    return bool(budget) and self.meta["tokens_seen"] >= budget

  def train(self) -> dict:
    step = self.start
    if self._budget_spent():  # resumed after the token budget ended it: finished
      self.end = step
    with _Preemption() as preemption:
      while step < self.end:
        k = _call_length(step, self.end, self.steps_per_call, self.eval_due, self.checkpointer)
        step = self._run_call(step, k)
        if self._budget_spent() and getattr(self, "finish_step", None) is None:  # also at a stop_after end
          log.info(f"train.max_tokens={self.config.train.max_tokens:,} reached at step {step} "
                   f"({self.meta['tokens_seen']:,} tokens seen): the run ends here")
          self.end = self.finish_step = step
        if self.eval_due(step) and step != self.end:
          results = _run_evals(self.evaluate, self.evaluators, self.state.params, step)
          self.growth.observe(results.get("loss"))
          self.writer.write(step, results, metrics_lib.EVAL_FILE)
        if preemption.requested or self.checkpointer.reached_preemption(step):
          self._save(step)
          self.checkpointer.wait()
          log.info(f"preempted: saved step {step} to {self.checkpointer.directory}; rerun to resume")
          return {"preempted": True, "step": step, **self.last}
        if self.checkpointer.due(step, self.end):
          self._save(step)
    final_evals = {}
    finished = self.end == self.config.train.steps or self.end == getattr(self, "finish_step", None)
    if finished and (self.evaluate or self.evaluators) and self.start < self.end:
      final_evals = _run_evals(self.evaluate, self.evaluators, self.state.params, self.end)
      self.writer.write(self.end, final_evals, metrics_lib.EVAL_FILE)
    return {"step": self.end, **self.last, **{f"eval/{k}": v for k, v in final_evals.items()}}

  def _step_fn(self, accumulate: int, k: int):
    """The jitted call of `k` steps of `accumulate` iterator batches each (compiled once per pair)."""
    if (accumulate, k) not in self.step_fns:
      config = self.config
      train_step = step_lib.make_train_step(
          self.model_config, self.optimizer, self.schedule, config.train.z_loss, config.train.vocab_chunk,
          config.train.microbatches * accumulate, config.train.objective, self.freeze, _objective_options(config))
      fn = train_step
      if k > 1:  # k optimizer steps in one call: no dispatch or host sync between them
        def fn(state, batches, reference=None):
          return jax.lax.scan(lambda s, b: train_step(s, b, reference), state, batches)
      with sharding.use_mesh(self.mesh, self.rules):
        self.step_fns[accumulate, k] = jax.jit(
            fn, in_shardings=(self.shardings, self.data_sharding if k == 1 else self.stacked_sharding,
                              None if self.reference is None else self.shardings.params),
            out_shardings=(self.shardings, sharding.replicated(self.mesh)), donate_argnums=(0,))
    return self.step_fns[accumulate, k]

  def _next_batches(self, k: int) -> tuple[list[dict], dict]:
    """k host batches (each `accumulate` iterator batches) and them on device (stacked when k > 1)."""
    accumulate = self.growth.accumulate
    local = []
    for _ in range(k):
      parts = [next(self.iterator) for _ in range(accumulate)]
      local.append(parts[0] if len(parts) == 1 else {n: np.concatenate([p[n] for p in parts]) for n in parts[0]})
    if k == 1:
      return local, _batch_to_device(local[0], self.data_sharding)
    return local, _batch_to_device({n: np.stack([b[n] for b in local]) for n in local[0]}, self.stacked_sharding)

  def _run_call(self, step: int, k: int) -> int:
    """Steps step+1 .. step+k in one compiled call, then each one's metrics, logging and halting check."""
    config, meta = self.config, self.meta
    local, batch = self._next_batches(k)
    with sharding.use_mesh(self.mesh, self.rules):
      self.state, call_metrics = self._step_fn(self.growth.accumulate, k)(self.state, batch, self.reference)
    call_metrics = jax.device_get(call_metrics)
    tokens = k * self.growth.accumulate * config.train.batch_size * config.train.seq_len
    tokens_per_s, call_time = self.throughput.tick(tokens)
    for i, host_batch in enumerate(local):
      step += 1
      step_metrics = call_metrics if k == 1 else {n: v[i] for n, v in call_metrics.items()}
      meta["tokens_seen"] += int(np.sum(np.asarray(host_batch["segment_ids"]) != 0)) * jax.process_count()
      step_metrics["batch_size"] = self.growth.accumulate * config.train.batch_size
      if step_metrics["finite"]:
        meta["nonfinite_in_a_row"] = 0
      else:
        meta["nonfinite_in_a_row"] += 1
        meta["nonfinite_total"] += 1
      self.last = {**step_metrics, "tokens_seen": meta["tokens_seen"], "tokens_per_s": tokens_per_s,
                   "step_time": call_time / k, "nonfinite_total": meta["nonfinite_total"]}
      util = flops.mfu(tokens_per_s, self.per_token_flops)
      if util is not None:
        self.last["mfu"] = util
      if step % config.train.log_every == 0 or step == self.end:
        self.writer.write(step, self.last)
      self.progress.update(step, float(step_metrics["loss"]), tokens_per_s)
      if meta["nonfinite_in_a_row"] >= config.train.max_nonfinite:
        raise TrainingHalted(
            f"{meta['nonfinite_in_a_row']} non-finite steps in a row at step {step} "
            f"(train.max_nonfinite={config.train.max_nonfinite}); the last checkpoint is intact. "
            "Lower optimizer.lr, raise warmup, or check the data")
    return step

  def _save(self, step: int) -> None:
    from yijax.data import pipeline

    if not step_lib.all_finite(self.state.params):
      raise TrainingHalted(f"parameters are not finite at step {step}; not checkpointing")
    state = self.state
    self.checkpointer.save(step, state.params, (state.opt_state, state.step, state.rng),
                           dict(self.meta, step=step, time=time.time()), pipeline.iterator_state(self.iterator),
                           json.loads(self.recorded_config.to_json_best_effort()), self.model_config)
    self.writer.sync()  # the metrics up to a checkpoint are as durable as the checkpoint (remote workdirs)

  def close(self) -> None:
    for part in ("progress", "writer", "checkpointer"):
      if hasattr(self, part):
        getattr(self, part).close()


class BatchGrowth:
  """Grows the batch by train.batch_growth.factor when the held-out loss stops falling.

  The step then draws `accumulate` iterator batches (so the data stream and its
  saved state stay those of the base batch); the state lives in the checkpoint meta.
  With batch_growth.ema > 0 the loss compared is an exponential moving average of
  the held-out losses (Yi-9B grew the batch when the smoothed loss stopped falling)."""

  def __init__(self, config, meta: dict):
    self.cfg = config.train.batch_growth
    self.base = config.train.batch_size
    self.meta = meta
    meta.setdefault("batch_accumulate", 1)
    meta.setdefault("growth_best_loss", None)
    meta.setdefault("growth_stale", 0)
    meta.setdefault("growth_smoothed_loss", None)

  @property
  def accumulate(self) -> int:
    return int(self.meta["batch_accumulate"])

  def observe(self, loss) -> None:
    if loss is None or self.cfg.factor <= 1:
      return
    ema, smoothed = float(self.cfg.get("ema", 0.0)), self.meta["growth_smoothed_loss"]
    if ema > 0:
      loss = loss if smoothed is None else ema * smoothed + (1 - ema) * loss
      self.meta["growth_smoothed_loss"] = loss
    best = self.meta["growth_best_loss"]
    if best is None or loss < best - self.cfg.min_delta:
      self.meta["growth_best_loss"], self.meta["growth_stale"] = loss, 0
      return
    self.meta["growth_stale"] += 1
    grown = self.accumulate * self.cfg.factor
    if self.meta["growth_stale"] >= self.cfg.patience and (
        not self.cfg.max_batch_size or grown * self.base <= self.cfg.max_batch_size):
      self.meta["batch_accumulate"], self.meta["growth_stale"] = grown, 0
      log.info(f"held-out loss flat for {self.cfg.patience} evaluations: batch -> {grown * self.base}")


def _eval_schedule(config):
  """step -> whether the loop evaluates after it: every eval.every_steps, and at each of eval.steps."""
  every, extra = config.eval.every_steps, frozenset(int(s) for s in config.eval.get("steps", ()))
  return lambda step: bool(every and step % every == 0) or step in extra


def _call_length(step: int, end: int, steps_per_call: int, eval_due, checkpointer) -> int:
  """Steps in the next compiled call after `step`: up to steps_per_call, ending at the next evaluation,
  checkpoint or the end, so those happen between calls exactly where they would step by step."""
  k = 1
  while k < steps_per_call and step + k < end:
    s = step + k
    if eval_due(s) or checkpointer.due(s, end):
      break
    k += 1
  return k


def _objective_options(config) -> dict:
  options = config.train.get("objective_options")
  return options.to_dict() if options is not None else {}


def _initial_params(config, model_config, optimizer, mesh, rules, shardings, abstract, logical, state):
  """W_0 of the run: its init_from model, or its seeded initialization (recomputed on resume)."""
  if state is not None:
    return state.params
  if config.train.init_from:
    return _load_initial_params(config.train.init_from, model_config, shardings.params, abstract, logical)
  return step_lib.init_state(model_config, optimizer, mesh, rules, config.train.seed).params


def _with_relative_update(evaluate, model_config, initial, k: int):
  def evaluate_and_measure(params, step: int) -> dict:
    return {**evaluate(params, step), **layerwise.relative_update(model_config, params, initial, k)}

  return evaluate_and_measure


def _run_evals(evaluate, evaluators, params, step: int) -> dict:
  results = dict(evaluate(params, step)) if evaluate else {}
  return {**results, **evaluation.run_evaluators(evaluators, params, step)}


def _load_initial_params(path, model_config, param_shardings, abstract, logical):
  location = params_io.locate_model(path)
  ckpt_lib.check_shapes(location.params_dir, abstract.params, logical)
  _, params = params_io.load_model(path, dtype=model_config.param_dtype, shardings=param_shardings)
  return params


