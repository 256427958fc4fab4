"""The base run config: every section and field a training run reads, documented.

`configs/pretrain/*.py` start from `base_config()` and change what they need;
the command line overrides any field with `--config.section.field=value`.
The stable public contract scripts may rely on: `train.steps`,
`train.batch_size`, `train.seq_len`, `optimizer.lr`, `checkpoint.every_steps`,
and `WORKDIR/metrics.jsonl` (one JSON object per step with `step` and `loss`).
"""

from __future__ import annotations

import ml_collections

from yijax import sharding
from yijax.models import presets


def base_config(model: str = "tiny") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # model: a ModelConfig (yijax/models/config.py); presets in configs/models/
  c.model = presets.config_dict(model)

  c.data = _data_config()

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100              # optimizer steps in the whole run
  c.train.batch_size = 8           # global batch, in sequences (all processes together)
  c.train.seq_len = 256            # tokens per packed sequence
  c.train.microbatches = 1         # gradient accumulation: batch_size / microbatches per pass
  c.train.seed = 0                 # parameter init and dropout-free PRNG stream
  c.train.z_loss = 1e-4            # coefficient of mean(logsumexp(logits)^2)
  c.train.vocab_chunk = 8192       # cross entropy in vocabulary chunks of this size (0 = whole vocab)
  c.train.max_nonfinite = 5        # halt after this many non-finite steps in a row (skipped, counted)
  c.train.log_every = 1            # write metrics every N steps
  c.train.init_from = ""           # model dir / run dir to start from (continual pretraining); "" = scratch
  c.train.progress_bar = True      # tqdm bar with tokens/s and ETA (process 0)
  c.train.stop_after = 0           # end this invocation after N steps (0 = run to train.steps); resumable
  c.train.objective = "lm"         # "lm" or "package.module:function" (train/objectives.py)
  c.train.reference_from = ""      # model dir of a frozen reference model the objective reads ("" = none)
  # grow the batch (x factor, by accumulating more iterator batches per step) when the held-out
  # loss has not improved by min_delta for `patience` evaluations (Yi-9B); factor 1 = off
  c.train.batch_growth = ml_collections.ConfigDict(
      {"factor": 1, "patience": 2, "min_delta": 0.0, "max_batch_size": 0})

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 1e-3            # peak learning rate
  c.optimizer.schedule = "cosine"  # cosine | wsd | constant (each with linear warmup)
  c.optimizer.warmup_steps = 10
  c.optimizer.min_lr_ratio = 0.1   # cosine / wsd end at lr * min_lr_ratio
  c.optimizer.decay_fraction = 0.2  # wsd: the last fraction of steps decays
  c.optimizer.decay_shape = "linear"  # wsd decay: linear | cosine | sqrt
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  # parameters whose path contains one of these words get no weight decay
  c.optimizer.no_decay = ("norm", "embed")
  c.optimizer.clip_norm = 1.0      # global-norm gradient clipping (0 = off)
  c.optimizer.freeze_layers = []   # layer indices whose parameters are never updated

  # mesh axis sizes; one may be -1 (= the remaining devices)
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "sequence": 1, "expert": 1})
  # (logical axis, mesh axes) rules; the first rule whose mesh axes are free wins
  c.sharding_rules = [list(rule) for rule in sharding.DEFAULT_RULES]

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 50    # save every N steps (and at the end, and on SIGTERM)
  c.checkpoint.keep_last = 3       # keep the newest K checkpoints
  c.checkpoint.keep_every = 0      # also keep every step divisible by M forever (0 = none)
  c.checkpoint.keep_log_spaced = 0  # also save and keep ~N log-spaced steps over the run (dense early)
  c.checkpoint.async_save = True   # write in the background while training continues

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 0           # periodic held-out perplexity (0 = only at the end if batches > 0)
  c.eval.batches = 4               # held-out batches per evaluation (0 = no eval)
  c.eval.batch_size = 8
  c.eval.multiple_choice = []      # JSONL files scored at each evaluation (context/choices/answer)
  c.eval.relative_update_k = 0     # > 0: log each layer's ||W - W0|| / ||W0|| and the bottom-k / top-k ratio

  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = "auto"   # auto | true | false: call jax.distributed.initialize
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1

  return c


def tiny_pretrain_config() -> ml_collections.ConfigDict:
  """The tiny model on the embedded corpus: configs/pretrain/tiny.py and `yijax quickstart`."""
  config = base_config("tiny")
  config.train.steps = 300
  config.train.batch_size = 8
  config.train.seq_len = 256
  config.optimizer.lr = 3e-3
  config.optimizer.warmup_steps = 30
  config.checkpoint.every_steps = 100
  config.eval.every_steps = 100
  config.eval.batches = 4
  config.data.sources = {"python_code": 0.7, "python_docs": 0.3}
  return config


def _data_config() -> ml_collections.ConfigDict:
  from yijax.data import pipeline

  return pipeline.default_data_config()
