"""Train a small model on your own text within a wall-time budget (`yijax quickstart --text=FILES`).

  1. split    each file: the first 90% of its bytes to train on, the rest (cut at a line end) held out
  2. tokenize a sentencepiece tokenizer trained on the train part, both parts prepared (yijax prepare)
  3. measure  a few train steps of the recipe on random tokens, to learn the step time on this machine
  4. train    as many steps as the remaining budget holds, with the warmup and cosine schedule fitted to
              them, the held-out part scored whole at the end (bits per byte)

Everything lands in WORKDIR, an ordinary run and model directory (config, checkpoints, tokenizer.model),
so `yijax generate --ckpt=WORKDIR`, `yijax prepare --tokenizer=WORKDIR` and `yijax eval --ckpt=WORKDIR`
work on it. WORKDIR/quickstart.json records the split, the recipe, the measured step time and the steps;
rerunning the same command resumes the same run.
"""

from __future__ import annotations

import logging
import dataclasses
import json
import math
import os
import time
from typing import Sequence

from yijax.errors import ConfigError, DataError, MissingFileError

log = logging.getLogger(__name__)

HELD_OUT = 0.1
PLAN = "quickstart.json"
MIN_STEPS = 8  # two calls of the default 4 steps
LOOP_OVERHEAD = 1.10
RUN_START_S = 8.0


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Model shape, vocabulary, sequence length, batch and learning rate of a budgeted run."""

  vocab_size: int = 1024
  hidden_size: int = 192
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 4
  mlp_dim: int = 512
  scan_unroll: int = 0  # layers unrolled in the layer scan (0 = all: faster small-model steps on CPU)
  seq_len: int = 128
  batch_size: int = 16
  steps_per_call: int = 4  # optimizer steps per compiled call (no dispatch or host sync between them)
  lr: float = 3e-3
  warmup_fraction: float = 0.05
  dropout: float = 0.0  # model.dropout_rate
  tie_embeddings: bool = False
  weight_decay: float = 0.1


def recipe_for(budget_s: float) -> Recipe:
  """The recipe a budget picks: the best held-out bits per byte of the sweeps in benchmarks/README.md
  (benchmarks/cpu_recipes.py on tinyshakespeare, 2 CPU cores). At about 1.5 minutes a one-layer model wins:
  a step that cheap sees twice the text of a four-layer one, and at that budget text seen decides. From about
  5 minutes the text is seen many times over and regularization pays: weight decay 1.0 beat 0.1, 0.5 and 2.0
  and dropout."""
  if budget_s <= 150:
    return Recipe(vocab_size=2048, hidden_size=128, num_layers=1, mlp_dim=352)
  if budget_s <= 600:
    # measured at 5 minutes: one layer overfits (12 passes over a megabyte), two layers of 128 beat two of 192,
    # three or four layers with dropout, and tied embeddings
    return Recipe(vocab_size=2048, hidden_size=128, num_layers=2, mlp_dim=352, weight_decay=1.0)
  # about 15 minutes (not swept: each row is 15 minutes of the machine): three times the 5-minute budget, so
  # one more layer and dropout on top of the 5-minute regularization
  return Recipe(vocab_size=2048, hidden_size=128, num_layers=3, mlp_dim=352, weight_decay=1.0, dropout=0.1)


DOC_BYTES = 8192


def pieces(text: str, size: int) -> list[str]:
  """`text` cut into consecutive pieces of about `size` characters, each ending at a line end where one is near."""
  out, start = [], 0
  while start < len(text):
    end = min(len(text), start + size)
    if end < len(text):
      cut = text.rfind("\n", start + size // 2, end)
      end = cut + 1 if cut >= 0 else end
    out.append(text[start:end])
    start = end
  return out


def split_text(files: Sequence[str], out_dir: str, held_out: float = HELD_OUT) -> dict:
  """Writes out_dir/train/<i>.txt and out_dir/heldout/<i>.txt for each file; returns their byte counts."""
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise MissingFileError(f"--text: {missing} not found (give text files, comma-separated)")
  counts = {"train_bytes": 0, "heldout_bytes": 0, "files": list(files)}
  for split in ("train", "heldout"):
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
  for i, path in enumerate(files):
    raw = open(path, "rb").read()
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"--text: {path} is not UTF-8 text ({e})") from None
    if len(text.strip()) < 1000:
      raise DataError(f"--text: {path} holds {len(text.strip())} characters; give at least a few kilobytes")
    cut = text.find("\n", int(len(text) * (1 - held_out)))
    cut = int(len(text) * (1 - held_out)) if cut < 0 else cut + 1
    parts = {"train": text[:cut], "heldout": text[cut:]}
    for split, part in parts.items():
      with open(os.path.join(out_dir, split, f"{i:03d}.txt"), "w", encoding="utf-8") as f:
        f.write(part)
      counts[f"{split}_bytes"] += len(part.encode("utf-8"))
  return counts


def prepare_text(files: Sequence[str], workdir: str, recipe: Recipe) -> tuple[str, dict]:
  """(prepared dir, split counts): the split, the tokenizer and both prepared splits (skipped when done)."""
  from yijax.data import prepare, tokenizer

  data = os.path.join(workdir, "data")
  counts_file = os.path.join(data, "split.json")
  if os.path.exists(counts_file):
    counts = json.load(open(counts_file))
  else:
    counts = split_text(files, data)
    json.dump(counts, open(counts_file, "w"), indent=1)
  train = sorted(os.path.join(data, "train", n) for n in os.listdir(os.path.join(data, "train")))
  heldout = sorted(os.path.join(data, "heldout", n) for n in os.listdir(os.path.join(data, "heldout")))
  tok_dir = os.path.join(data, "tokenizer")
  if not os.path.exists(os.path.join(tok_dir, tokenizer.MODEL_FILE)):
    tokenizer.train_tokenizer(train, recipe.vocab_size, tok_dir)
  prepared = os.path.join(data, "prepared")
  # the train part as documents of about DOC_BYTES (cut at line ends): the packing pipeline reads a record
  # per row it fills, and one megabyte-long record per file made every read cost milliseconds
  docs = os.path.join(data, "train_docs.jsonl")
  if not os.path.exists(docs):
    with open(docs + ".tmp", "w", encoding="utf-8") as f:
      for path in train:
        for piece in pieces(open(path, encoding="utf-8").read(), DOC_BYTES):
          f.write(json.dumps({"text": piece}) + "\n")
    os.replace(docs + ".tmp", docs)
  specs = [prepare.SourceSpec("text", "train", (docs,), file_format="jsonl"),
           prepare.SourceSpec("text", "validation", tuple(heldout), file_format="text")]
  manifest = prepare.prepare(specs, os.path.join(tok_dir, tokenizer.MODEL_FILE), prepared, num_workers=1,
                             progress=False)
  counts["heldout_tokens"] = manifest["splits"]["validation"]["text"]["tokens"]
  return prepared, counts


def run_config(recipe: Recipe, prepared: str, steps: int, eval_batches: int, seed: int = 0):
  from yijax.models import presets
  from yijax.train.config import base_config

  config = base_config("tiny")
  config.model = presets.config_dict(
      "tiny", vocab_size=recipe.vocab_size, hidden_size=recipe.hidden_size, num_layers=recipe.num_layers,
      num_heads=recipe.num_heads, num_kv_heads=recipe.num_kv_heads, head_dim=recipe.hidden_size // recipe.num_heads,
      mlp_dim=recipe.mlp_dim, max_seq_len=max(recipe.seq_len, 128),
      scan_unroll=recipe.scan_unroll or recipe.num_layers, dropout_rate=recipe.dropout,
      tie_embeddings=recipe.tie_embeddings)
  config.data.prepared_dir = prepared
  config.data.sources = {"text": 1.0}
  config.train.steps = steps
  config.train.batch_size = recipe.batch_size
  config.train.seq_len = recipe.seq_len
  config.train.seed = seed
  config.train.progress_bar = False
  config.train.steps_per_call = recipe.steps_per_call
  config.train.tensorboard = False  # importing its writer alone costs seconds of a small budget
  config.optimizer.lr = recipe.lr
  config.optimizer.weight_decay = recipe.weight_decay
  config.optimizer.warmup_steps = max(1, int(math.ceil(recipe.warmup_fraction * steps)))
  config.checkpoint.every_steps = steps
  config.checkpoint.keep_last = 1
  config.checkpoint.async_save = False
  config.eval.every_steps = 0
  config.eval.batches = eval_batches
  config.eval.batch_size = recipe.batch_size
  return config


def measure_step_time(config, steps: int = 6) -> tuple[float, float]:
  """(seconds per train step, seconds of the first call) of a run config on this machine: its real step (same
  model, batch, loss and optimizer) on random tokens, timed after the first call (the compile). No data,
  checkpoint or logs."""
  import jax
  import numpy as np

  from yijax import sharding
  from yijax.train import optimizer as opt_lib, step as step_lib, validation

  plan = validation.check_run_config(config)
  tx, schedule = opt_lib.make_optimizer(config.optimizer, config.train.steps)
  mesh, rules, model_config = plan.mesh, plan.rules, plan.model_config
  state = step_lib.init_state(model_config, tx, mesh, rules, config.train.seed)
  _, shardings, _ = step_lib.state_shardings(model_config, tx, mesh, rules, config.train.seed)
  train_step = step_lib.make_train_step(model_config, tx, schedule, config.train.z_loss, config.train.vocab_chunk,
                                        config.train.microbatches)
  k = int(config.train.get("steps_per_call", 1) or 1)
  shape = (config.train.batch_size, config.train.seq_len)
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, model_config.vocab_size, shape).astype(np.int32),
           "segment_ids": np.ones(shape, np.int32),
           "positions": np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy()}
  data = sharding.data_sharding(mesh, rules)
  if k > 1:  # the loop's k-step call: a scan over k batches
    batch = {name: np.stack([value] * k) for name, value in batch.items()}
    data, step = sharding.stacked(data), train_step
    train_step = lambda state, batches: jax.lax.scan(step, state, batches)
  with sharding.use_mesh(mesh, rules):
    fn = jax.jit(train_step, in_shardings=(shardings, data), donate_argnums=(0,))
    batch = jax.device_put(batch, data)
    times = []
    for _ in range(max(2, -(-steps // k)) + 1):
      start = time.perf_counter()
      state, metrics = fn(state, batch)
      jax.device_get(metrics)
      times.append(time.perf_counter() - start)
  return float(np.median(times[1:])) / k, times[0]


def process_start_time() -> float | None:
  """When this process started (Linux /proc; to the second), so a budget covers interpreter start and imports."""
  try:
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/stat") as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError, StopIteration):
    return None


def train_on_text(files: Sequence[str], workdir: str, budget_s: float, seed: int = 0,
                  recipe: Recipe | None = None, start: float | None = None) -> dict:
  """The whole budgeted run; returns the plan and the final metrics (held-out bits per byte included).
  start: when the budget began (default now; the command line passes its process's start)."""
  from yijax.train import loop

  start = time.time() if start is None else min(start, time.time())
  if budget_s < 30:
    raise ConfigError(f"--budget_s={budget_s} is too small: tokenizer, preparation and one compile alone take "
                      "about 20 s on 2 CPU cores; give at least 30")
  os.makedirs(workdir, exist_ok=True)
  plan_path = os.path.join(workdir, PLAN)
  plan = json.load(open(plan_path)) if os.path.exists(plan_path) else None
  recipe = Recipe(**plan["recipe"]) if plan else (recipe or recipe_for(budget_s))
  prepared, counts = prepare_text(files, workdir, recipe)
  eval_batches = max(1, math.ceil(counts["heldout_tokens"] / (recipe.batch_size * recipe.seq_len)) + 1)
  if plan is None:
    prepared_s = time.time() - start
    seconds, first_call = measure_step_time(run_config(recipe, prepared, 1000, 0, seed))
    # the loop's own work per step (data, metrics, logging) adds about LOOP_OVERHEAD to the bare step; the
    # run compiles again (its schedule differs), starts its data and writers (RUN_START_S), scores the held
    # out part forward only (about a third of a step per batch) and saves
    seconds *= LOOP_OVERHEAD
    reserve = first_call + RUN_START_S + eval_batches * seconds / 3 + 0.04 * budget_s
    k = recipe.steps_per_call  # whole compiled calls of k steps
    least = k * math.ceil(MIN_STEPS / k)
    steps = max(least, int((budget_s - (time.time() - start) - reserve) / seconds) // k * k)
    if steps == least:
      log.info(f"the budget of {budget_s:.0f} s leaves less than {least} steps of {seconds:.2f} s after "
               f"preparation and measuring ({time.time() - start:.0f} s); training {least} steps anyway")
    plan = {"recipe": dataclasses.asdict(recipe), "step_time_s": seconds, "steps": steps, "seed": seed,
            "prepare_s": prepared_s, "measure_s": time.time() - start - prepared_s, "first_call_s": first_call,
            "budget_s": budget_s, "eval_batches": eval_batches, **counts}
    json.dump(plan, open(plan_path, "w"), indent=1)
  result = loop.train(run_config(recipe, prepared, plan["steps"], eval_batches, plan["seed"]), workdir)
  seconds = time.time() - start
  if not plan.get("seconds"):
    plan["seconds"] = seconds
    json.dump(plan, open(plan_path, "w"), indent=1)
  return {"plan": plan, "result": result, "seconds": seconds}
