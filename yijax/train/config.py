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
  # unpacked rows of single document chunks (the unlearning data; yijax/data/chunked.py) instead of the
  # packed mixture: every document cut into consecutive train.seq_len-token chunks, right-padded
  c.data.chunked = _chunked_config()
  # chat fine-tuning: JSONL conversations rendered with a chat template, packed, loss on assistant tokens
  # (yijax/data/sft.py; with train.objective="sft")
  c.data.sft = _sft_config()

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
  c.train.steps_per_call = 1       # optimizer steps per compiled call (k > 1: a scan over k batches, no host
                                   # sync between them; evals and checkpoints still land on their steps)
  c.train.init_from = ""           # model dir / run dir to start from (continual pretraining); "" = scratch
  # run dir / checkpoint step dir / `yijax surgery` output whose data-iterator state a fresh run starts
  # from (continue the source run's data stream after growth; same data config, seq_len and batch); "" = start
  c.train.init_data_state_from = ""
  c.train.progress_bar = True      # tqdm bar with tokens/s and ETA (process 0)
  c.train.tensorboard = True       # also write TensorBoard events (metrics.jsonl is always written)
  c.train.stop_after = 0           # end this invocation after N steps (0 = run to train.steps); resumable
  # end the run (final evaluation and checkpoint) after the step at which tokens_seen reaches this many real
  # tokens (0 = off); train.steps then only bounds it. A stage length in tokens that batch growth cannot stretch
  c.train.max_tokens = 0
  c.train.objective = "lm"         # "lm", "sft" or "package.module:function" (train/objectives.py)
  c.train.reference_from = ""      # model dir of a frozen reference model the objective reads ("" = none)
  # options passed to the objective with z_loss and vocab_chunk (read by yijax.unlearning.objectives, train/sft.py)
  c.train.objective_options = ml_collections.ConfigDict({
      "label_seed": 0,               # random_labels: seed of the random targets (a function of seed and chunk)
      "adversarial_shift": False,    # adversarial_labels: True = the reference code's one-position shift
      "kl_mask_padding": False,      # ascent_kl: False = cross entropy over all positions (reference code)
      "seq_chunk": 512,              # positions per block when full-vocabulary logits are needed
      "neftune_alpha": 0.0,          # sft: NEFTune embedding noise scale (Yi: 5 for 6B, 45 for 34B; 0 = off)
  })
  # grow the batch (x factor, by accumulating more iterator batches per step) when the held-out
  # loss has not improved by min_delta for `patience` evaluations (Yi-9B); factor 1 = off.
  # ema > 0 compares an exponential moving average of the held-out loss (weight ema on the past)
  c.train.batch_growth = ml_collections.ConfigDict(
      {"factor": 1, "patience": 2, "min_delta": 0.0, "max_batch_size": 0, "ema": 0.0})

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 1e-3            # peak learning rate
  c.optimizer.schedule = "cosine"  # cosine | wsd | constant | hf_cosine (each with linear warmup)
  c.optimizer.warmup_steps = 10
  c.optimizer.warmup_ratio = 0.0   # > 0: warmup = ceil(ratio * train.steps), replacing warmup_steps (HF Trainer)
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
  c.checkpoint.keep_steps = []     # also save and keep exactly these steps
  c.checkpoint.async_save = True   # write in the background while training continues

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 0           # periodic held-out perplexity (0 = only at the end if batches > 0)
  c.eval.steps = []                # also evaluate after exactly these steps (e.g. dense early)
  c.eval.batches = 4               # held-out batches per evaluation (0 = no eval)
  c.eval.batch_size = 8
  c.eval.multiple_choice = []      # JSONL files scored at each evaluation (context/choices/answer)
  c.eval.relative_update_k = 0     # > 0: log each layer's ||W - W0|| / ||W0|| and the bottom-k / top-k ratio
  # dense evaluation during training (yijax/eval/dense.py): battery tasks / JSONL files -> tasks/<name>/<metric>
  c.eval.tasks = []                # battery task names or JSONL paths, scored in-process
  c.eval.tasks_every_steps = 0     # at evaluations whose step is a multiple of this (0 = every evaluation)
  c.eval.tasks_options = ml_collections.ConfigDict()  # evaluate_tasks options (batch_size, add_bos, num_items...)
  c.eval.tasks_seed = 0            # the seed the battery builds its items from
  c.eval.source_losses = []        # sources whose eval_split loss is logged alone as loss/<source>
  c.eval.source_loss_batches = 0   # batches of each (0 = the whole split)

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


def _chunked_config() -> ml_collections.ConfigDict:
  from yijax.data import chunked

  return chunked.default_config()


def _sft_config() -> ml_collections.ConfigDict:
  from yijax.data import sft

  return sft.default_config()


def _data_config() -> ml_collections.ConfigDict:
  from yijax.data import pipeline

  return pipeline.default_data_config()
