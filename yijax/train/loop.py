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
import math
import signal
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from yijax import paths, sharding
from yijax.train import checkpoint as ckpt_lib
from yijax.train import flops, metrics as metrics_lib, optimizer as opt_lib, params_io, step as step_lib
from yijax.train import layerwise, validation
from yijax.errors import CheckpointMismatchError, YijaxError

Evaluator = Callable[[Any, int], dict]


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
      print(f"skipping damaged checkpoint step {step}: {e} (moved to {where})", flush=True)
      continue
    pipeline.restore_iterator(iterator, data_state)
    opt_state, step_count, rng = opt_state
    return step, step_lib.TrainState(step_count, params, opt_state, rng), saved_meta
  return None


def _batch_to_device(batch: dict, data_sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(data_sharding, np.asarray(v)) for k, v in batch.items()}


def train(config, workdir: str, evaluators: Sequence[Evaluator] = ()) -> dict:
  """Runs (or resumes) the run in `workdir`; returns the last metrics and evals."""
  from yijax.data import chunked, pipeline

  sharding.maybe_initialize_distributed(
      config.distributed.enabled, config.distributed.coordinator_address or None,
      config.distributed.num_processes or None,
      config.distributed.process_id if config.distributed.process_id >= 0 else None,
  )
  paths.check_output_dir(paths.resolve(workdir), "--workdir")
  plan = validation.check_run_config(config)  # everything that can fail, before compiling
  model_config, mesh, rules = plan.model_config, plan.mesh, plan.rules
  workdir = paths.resolve(workdir)
  paths.makedirs(workdir)
  if jax.process_index() == 0:
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True))
    if plan.tokenizer_path and not paths.exists(paths.join(workdir, params_io.TOKENIZER)):
      paths.copy_file(plan.tokenizer_path, paths.join(workdir, params_io.TOKENIZER))
  logging.info("resolved config:\n%s", config)

  optimizer, schedule = opt_lib.make_optimizer(config.optimizer, config.train.steps)
  abstract, shardings, logical = step_lib.state_shardings(model_config, optimizer, mesh, rules, config.train.seed)
  checkpointer = ckpt_lib.RunCheckpointer(workdir, config.checkpoint, config.train.steps)
  data_sharding = sharding.data_sharding(mesh, rules)
  per_process = config.train.batch_size // jax.process_count()
  make_iterator = chunked.train_iterator if chunked.enabled(config.data) else pipeline.train_iterator
  iterator = make_iterator(config.data, config.train.seq_len, per_process, config.train.seed)

  resume_step, meta = None, {"tokens_seen": 0, "nonfinite_total": 0, "nonfinite_in_a_row": 0}
  resumed = _restore_newest_good(checkpointer, abstract, shardings, logical, iterator)
  if resumed is not None:
    resume_step, state, saved_meta = resumed
    meta.update(saved_meta)
    print(f"resumed {workdir} at step {resume_step} ({meta['tokens_seen']:,} tokens seen)", flush=True)
  else:
    params = None
    if config.train.init_from:
      params = _load_initial_params(config.train.init_from, model_config, shardings.params, abstract, logical)
      print(f"initialized from {config.train.init_from}", flush=True)
    if config.train.get("init_data_state_from"):
      pipeline.restore_iterator(iterator, ckpt_lib.read_data_state(
          config.train.init_data_state_from, jax.process_index(), jax.process_count()))
      print(f"data stream continues from {config.train.init_data_state_from}", flush=True)
    state = step_lib.init_state(model_config, optimizer, mesh, rules, config.train.seed, params)
  start = int(resume_step or 0)

  freeze = None
  if config.optimizer.freeze_layers:
    freeze = layerwise.freeze_mask(model_config, abstract.params, config.optimizer.freeze_layers)
  reference = None
  if config.train.reference_from:
    reference = _load_initial_params(config.train.reference_from, model_config, shardings.params, abstract, logical)
  growth = BatchGrowth(config, meta)
  step_fns: dict[int, Any] = {}

  steps_per_call = int(config.train.get("steps_per_call", 1) or 1)
  stacked_sharding = sharding.stacked(data_sharding)

  def step_fn_for(accumulate: int, k: int = 1):
    """The jitted call of `k` steps of `accumulate` iterator batches each (compiled once per pair)."""
    if (accumulate, k) not in step_fns:
      train_step = step_lib.make_train_step(
          model_config, optimizer, schedule, config.train.z_loss, config.train.vocab_chunk,
          config.train.microbatches * accumulate, config.train.objective, freeze,
          _objective_options(config))
      fn = train_step
      if k > 1:  # k optimizer steps in one call: no dispatch or host sync between them
        def fn(state, batches, reference=None):
          return jax.lax.scan(lambda s, b: train_step(s, b, reference), state, batches)
      with sharding.use_mesh(mesh, rules):
        step_fns[accumulate, k] = jax.jit(
            fn, in_shardings=(shardings, data_sharding if k == 1 else stacked_sharding,
                              None if reference is None else shardings.params),
            out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    return step_fns[accumulate, k]

  evaluate = _held_out_evaluator(config, model_config, mesh, rules, shardings.params, plan)
  initial_params = None
  if config.eval.relative_update_k and evaluate is not None:
    initial_params = jax.device_get(_initial_params(config, model_config, optimizer, mesh, rules, shardings,
                                                    abstract, logical, state if resume_step is None else None))
    evaluate = _with_relative_update(evaluate, model_config, initial_params, config.eval.relative_update_k)
  writer = metrics_lib.MetricsWriter(workdir, start, tensorboard=bool(config.train.get("tensorboard", True)))
  per_token_flops = flops.train_flops_per_token(model_config, config.train.seq_len)
  end = config.train.steps if not config.train.stop_after else min(config.train.steps, start + config.train.stop_after)
  progress = metrics_lib.Progress(config.train.steps, start, config.train.progress_bar)
  throughput = metrics_lib.Throughput()
  last: dict = {}
  eval_every = config.eval.every_steps

  def save(step_number: int) -> None:
    if not step_lib.all_finite(state.params):
      raise TrainingHalted(f"parameters are not finite at step {step_number}; not checkpointing")
    checkpointer.save(step_number, state.params, (state.opt_state, state.step, state.rng),
                      dict(meta, step=step_number, time=time.time()), pipeline.iterator_state(iterator),
                      json.loads(config.to_json_best_effort()), model_config)
    writer.sync()  # the metrics up to a checkpoint are as durable as the checkpoint (remote workdirs)

  try:
    with _Preemption() as preemption:
      step_number = start
      while step_number < end:
        k = _call_length(step_number, end, steps_per_call, eval_every if evaluate else 0, checkpointer)
        locals_ = []
        for _ in range(k):
          parts = [next(iterator) for _ in range(growth.accumulate)]
          locals_.append(parts[0] if len(parts) == 1 else {n: np.concatenate([p[n] for p in parts]) for n in parts[0]})
        if k == 1:
          batch = _batch_to_device(locals_[0], data_sharding)
        else:
          batch = _batch_to_device({n: np.stack([b[n] for b in locals_]) for n in locals_[0]}, stacked_sharding)
        with sharding.use_mesh(mesh, rules):
          state, call_metrics = step_fn_for(growth.accumulate, k)(state, batch, reference)
        call_metrics = jax.device_get(call_metrics)
        tokens_per_s, call_time = throughput.tick(k * growth.accumulate * config.train.batch_size * config.train.seq_len)
        for i, local in enumerate(locals_):
          step_number += 1
          step_metrics = call_metrics if k == 1 else {n: v[i] for n, v in call_metrics.items()}
          meta["tokens_seen"] += int(np.sum(np.asarray(local["segment_ids"]) != 0)) * jax.process_count()
          step_metrics["batch_size"] = growth.accumulate * config.train.batch_size
          if step_metrics["finite"]:
            meta["nonfinite_in_a_row"] = 0
          else:
            meta["nonfinite_in_a_row"] += 1
            meta["nonfinite_total"] += 1
          last = {**step_metrics, "tokens_seen": meta["tokens_seen"], "tokens_per_s": tokens_per_s,
                  "step_time": call_time / k, "nonfinite_total": meta["nonfinite_total"]}
          util = flops.mfu(tokens_per_s, per_token_flops)
          if util is not None:
            last["mfu"] = util
          if step_number % config.train.log_every == 0 or step_number == end:
            writer.write(step_number, last)
          progress.update(step_number, float(step_metrics["loss"]), tokens_per_s)
          if meta["nonfinite_in_a_row"] >= config.train.max_nonfinite:
            raise TrainingHalted(
                f"{meta['nonfinite_in_a_row']} non-finite steps in a row at step {step_number} "
                f"(train.max_nonfinite={config.train.max_nonfinite}); the last checkpoint is intact. "
                "Lower optimizer.lr, raise warmup, or check the data")
        if evaluate and eval_every and step_number % eval_every == 0 and step_number != end:
          results = _run_evals(evaluate, evaluators, state.params, step_number)
          growth.observe(results.get("loss"))
          writer.write(step_number, results, metrics_lib.EVAL_FILE)
        if preemption.requested or checkpointer.reached_preemption(step_number):
          save(step_number)
          checkpointer.wait()
          print(f"preempted: saved step {step_number} to {checkpointer.directory}; rerun to resume", flush=True)
          return {"preempted": True, "step": step_number, **last}
        if checkpointer.due(step_number, end):
          save(step_number)
    final_evals = {}
    if end == config.train.steps and (evaluate or evaluators) and start < end:
      final_evals = _run_evals(evaluate, evaluators, state.params, end)
      writer.write(end, final_evals, metrics_lib.EVAL_FILE)
    return {"step": end, **last, **{f"eval/{k}": v for k, v in final_evals.items()}}
  finally:
    progress.close()
    writer.close()
    checkpointer.close()


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
      print(f"held-out loss flat for {self.cfg.patience} evaluations: batch -> {grown * self.base}", flush=True)


def _call_length(step: int, end: int, steps_per_call: int, eval_every: int, checkpointer) -> int:
  """Steps in the next compiled call after `step`: up to steps_per_call, ending at the next evaluation,
  checkpoint or the end, so those happen between calls exactly where they would step by step."""
  k = 1
  while k < steps_per_call and step + k < end:
    s = step + k
    if (eval_every and s % eval_every == 0) or checkpointer.due(s, end):
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
  def evaluate_and_measure(params) -> dict:
    return {**evaluate(params), **layerwise.relative_update(model_config, jax.device_get(params), initial, k)}

  return evaluate_and_measure


def _run_evals(evaluate, evaluators, params, step: int) -> dict:
  results = dict(evaluate(params)) if evaluate else {}
  for evaluator in evaluators:
    results.update(evaluator(params, step))
  return results


def _load_initial_params(path, model_config, param_shardings, abstract, logical):
  location = params_io.locate_model(path)
  ckpt_lib.check_shapes(location.params_dir, abstract.params, logical)
  _, params = params_io.load_model(path, dtype=model_config.param_dtype, shardings=param_shardings)
  return params


def _held_out_evaluator(config, model_config, mesh, rules, param_shardings, plan):
  """Held-out loss / perplexity / bits per byte over fixed eval batches (or None)."""
  from yijax.data import pipeline

  if config.eval.batches <= 0:
    return None
  batches = pipeline.eval_batches(config.data, config.data.eval_split, config.train.seq_len,
                                  config.eval.batch_size // jax.process_count(), config.eval.batches,
                                  process_index=jax.process_index(), process_count=jax.process_count())
  if not batches:
    return None
  eval_step = step_lib.make_eval_step(model_config, config.train.vocab_chunk)
  data_sharding = sharding.data_sharding(mesh, rules)
  with sharding.use_mesh(mesh, rules):
    eval_fn = jax.jit(eval_step, in_shardings=(param_shardings, data_sharding))
  bytes_table = plan.token_bytes

  def evaluate(params) -> dict:
    nll, count, num_bytes = 0.0, 0.0, 0
    for local in batches:
      device_batch = _batch_to_device(local, data_sharding)
      with sharding.use_mesh(mesh, rules):
        batch_nll, batch_count = eval_fn(params, device_batch)
      nll += float(batch_nll)
      count += float(batch_count)
      if bytes_table is not None:
        num_bytes += int(_target_bytes(local, bytes_table))
    loss = nll / max(count, 1.0)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens": int(count)}
    if bytes_table is not None and num_bytes:
      out["bits_per_byte"] = nll / (math.log(2) * num_bytes)
    return out

  return evaluate


def _target_bytes(batch: dict, bytes_table: np.ndarray) -> int:
  tokens, segments = np.asarray(batch["tokens"]), np.asarray(batch["segment_ids"])
  same = (segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] != 0)
  return int(bytes_table[tokens[:, 1:]][same].sum())
