"""Every check a run config must pass before anything is compiled.

A config that cannot work fails here with a ConfigError naming the field and
the fix: model shapes, mesh vs devices, batch vs mesh and processes, sequence
length vs the model, tokenizer vs vocabulary, schedule vs steps.
"""

from __future__ import annotations

import logging
import dataclasses
import json
import math
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np

from yijax import configlib, paths, sharding
from yijax.errors import DataError
from yijax.models.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunPlan:
  """What a checked run config resolves to. check_run_config fills the model, mesh and rules and checks given
  data; resolve_data then adds the data config the run reads (the default data prepared if none was given)
  with its tokenizer. Neither changes the run config."""

  model_config: ModelConfig
  mesh: Any
  rules: tuple
  tokenizer_path: str | None = None
  token_bytes: np.ndarray | None = None  # UTF-8 bytes per token id, for bits per byte
  data: Any = None  # a copy of config.data with prepared_dir resolved (resolve_data)
  sft: Any = None  # data.sft runs: the chat tokenizer and encoded conversations (yijax/train/sft.py)


def _positive(config, dotted: str) -> int:
  section, field = dotted.split(".")
  value = config[section][field]
  if not isinstance(value, int) or value <= 0:
    raise ConfigError(f"{dotted}={value!r} must be a positive integer")
  return value


def check_run_config(config) -> RunPlan:
  """Checks everything that can fail before a run touches data or devices' memory: errors name the field and
  the fix. Reads the manifest of given prepared data; prepares nothing and changes nothing."""
  model_config = configlib.model_config(config)
  for dotted in ("train.steps", "train.batch_size", "train.seq_len", "train.microbatches",
                 "checkpoint.every_steps", "train.log_every"):
    _positive(config, dotted)
  if config.train.get("steps_per_call") is not None:
    _positive(config, "train.steps_per_call")
  train = config.train
  eval_steps = list(config.eval.get("steps", ()))
  bad = [s for s in eval_steps if isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= train.steps]
  if bad:
    raise ConfigError(f"eval.steps={eval_steps} has {bad}: each must be a step in 1..train.steps={train.steps}")
  if train.seq_len > model_config.max_seq_len:
    raise ConfigError(
        f"train.seq_len={train.seq_len} exceeds model.max_seq_len={model_config.max_seq_len}; "
        f"raise --config.model.max_seq_len (and consider a RoPE scaling) or shorten train.seq_len")
  if train.batch_size % train.microbatches:
    raise ConfigError(f"train.batch_size={train.batch_size} is not divisible by train.microbatches="
                      f"{train.microbatches}")
  if train.batch_size % jax.process_count():
    raise ConfigError(f"train.batch_size={train.batch_size} must divide evenly over {jax.process_count()} "
                      "processes")
  rules = sharding.normalize_rules(config.sharding_rules)
  mesh = sharding.make_mesh(dict(config.mesh))
  batch_axes = sharding.logical_to_spec(("batch",), rules)[0] or ()
  batch_axes = batch_axes if isinstance(batch_axes, tuple) else (batch_axes,)
  batch_shards = int(np.prod([mesh.shape[a] for a in batch_axes])) if batch_axes else 1
  micro = train.batch_size // train.microbatches
  if micro % batch_shards:
    raise ConfigError(
        f"train.batch_size={train.batch_size} / train.microbatches={train.microbatches} = {micro} sequences "
        f"per pass cannot be split over the {batch_shards} batch shards of mesh {dict(mesh.shape)} "
        f"(axes {batch_axes}); use a multiple of {batch_shards}")
  if config.eval.batches > 0 and config.eval.batch_size % batch_shards:
    raise ConfigError(f"eval.batch_size={config.eval.batch_size} must be a multiple of the {batch_shards} "
                      "batch shards of the mesh")
  _check_optimizer(config.optimizer)
  from yijax.train import optimizer as opt_lib

  warmup = opt_lib.warmup_steps(config.optimizer, train.steps)
  if warmup > train.steps:
    raise ConfigError(f"optimizer.warmup_steps={warmup} exceeds train.steps={train.steps}")
  if config.data.prepared_dir:
    _check_data(config.data, model_config)
  return RunPlan(model_config, mesh, rules)


def _check_optimizer(optimizer) -> None:
  """Learning rate and AdamW settings that cannot train: negative or non-finite values, betas outside [0, 1)."""
  def number(field):
    value = optimizer[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise ConfigError(f"optimizer.{field}={value!r} must be a finite number")
    return value

  if number("lr") < 0:
    raise ConfigError(f"optimizer.lr={optimizer.lr} is negative: that trains by gradient ascent; give a "
                      "learning rate >= 0 (an unlearning objective sets its own sign: train.objective)")
  for field in ("b1", "b2"):
    if not 0 <= number(field) < 1:
      raise ConfigError(f"optimizer.{field}={optimizer[field]} must be in [0, 1)")
  if number("eps") <= 0:
    raise ConfigError(f"optimizer.eps={optimizer.eps} must be positive")
  for field in ("weight_decay", "clip_norm"):
    if number(field) < 0:
      raise ConfigError(f"optimizer.{field}={optimizer[field]} must be >= 0")
  if not 0 <= number("min_lr_ratio") <= 1:
    raise ConfigError(f"optimizer.min_lr_ratio={optimizer.min_lr_ratio} must be in [0, 1]")


def _check_data(data, model_config: ModelConfig) -> dict:
  from yijax.data import pipeline

  manifest = pipeline.read_manifest(data.prepared_dir, data.split, list(data.sources))
  pipeline.check_tokenizer(manifest, model_config.vocab_size)
  return manifest


def resolve_data(config, plan: RunPlan) -> RunPlan:
  """The plan with the data the run reads: config.data (copied), or the embedded corpus prepared once into a
  shared cache (default_prepared_dir) when no data.prepared_dir is given; and its tokenizer. data.sft runs:
  the chat tokenizer and the encoded conversations (plan.sft)."""
  from yijax.data import sft as sft_data
  from yijax.data.tokenizer import Tokenizer

  data = ml_collections.ConfigDict(config.data.to_dict())
  if sft_data.enabled(data):  # chat conversations, tokenized when the run starts: no prepared data
    from yijax.train import sft

    resolved = sft.resolve(config, plan.model_config)
    return dataclasses.replace(plan, data=data, tokenizer_path=resolved.tokenizer_path, sft=resolved)
  if not data.prepared_dir:
    data.prepared_dir = default_prepared_dir(plan.model_config.vocab_size)
  manifest = _check_data(data, plan.model_config)
  path = manifest["tokenizer"]["path"]  # local, or gs:// (data prepared by a study on GCS)
  if not paths.exists(path):
    return dataclasses.replace(plan, data=data)
  return dataclasses.replace(plan, data=data, tokenizer_path=path, token_bytes=Tokenizer(path).byte_lengths())


DEFAULT_DATA_VOCAB = 4096


def default_prepared_dir(model_vocab_size: int) -> str:
  """The embedded corpus, tokenized and prepared once into a cache shared by runs.

  $YIJAX_CACHE_DIR (default ~/.cache/yijax)/embedded-<corpus fingerprint>-v<vocab>;
  a file lock keeps concurrent runs (or processes) from preparing it twice.
  """
  import fcntl

  from yijax.data import corpus, prepare

  vocab = min(model_vocab_size, DEFAULT_DATA_VOCAB)
  root = os.environ.get("YIJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "yijax")
  out = os.path.join(root, f"embedded-{corpus.fingerprint()[:12]}-v{vocab}")
  os.makedirs(root, exist_ok=True)
  with open(out + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    manifest = os.path.join(out, "manifest.json")
    done = os.path.exists(manifest) and json.load(open(manifest)).get("complete")
    if not done:
      log.info(f"preparing the embedded corpus into {out} (once)")
      try:
        prepare.prepare_embedded(out, vocab, progress=jax.process_index() == 0)
      except DataError as e:
        shutil.rmtree(out, ignore_errors=True)  # a cache that failed to build is not left half-written
        raise ConfigError(f"model.vocab_size={model_vocab_size}: the default data (the embedded corpus) cannot "
                          f"be tokenized with {vocab} pieces ({e}); raise model.vocab_size, or give "
                          "data.prepared_dir prepared with your own tokenizer") from None
  return out
