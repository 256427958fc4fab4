"""Checkpoint dynamics (Yang et al., "The Fine Line: Navigating LLM Pretraining with Down-streaming
Capability Analysis", arXiv 2404.01204).

  yijax experiment --config=experiments/checkpoint_dynamics/config.py:smoke --workdir=/tmp/dynamics_smoke
  nice -n 5 yijax experiment --config=experiments/checkpoint_dynamics/config.py:cpu --workdir=runs/dynamics_cpu
  yijax experiment --config=experiments/checkpoint_dynamics/config.py:paper --workdir=runs/dynamics_paper \
      --config.paths.checkpoints=/ckpts/amber_converted --config.paths.tokenizer=/ckpts/amber/tokenizer.model \
      --config.paths.benchmarks=/bench/arc_easy.jsonl,/bench/hellaswag.jsonl --dry_run

Stages (smoke / cpu / gpu): data (the embedded corpus + the battery's facts and
arith teaching text as a small share of the mixture; yijax/studies/checkpoint_dynamics.py)
-> train_<size> for three model sizes on the same data order and seed, keeping
log-spaced checkpoints (dense early) -> eval_<size>: the whole battery on every
kept checkpoint (`yijax eval --run_dir` machinery, resumable) -> report
(yijax/analysis/dynamics.py: curves against tokens and FLOPs, the Spearman
matrix of task trajectories within vs across domains, lagged correlation,
normalised curves across sizes, downstream metrics against held-out loss).
paper: the same evaluation and analysis over a directory of converted released
checkpoints (named or tagged by tokens seen), real benchmarks as JSONL files.
"""

import ml_collections

from yijax import configlib, models
from yijax.eval.tasks import pretraining
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import tiny_pretrain_config

STAGES = "yijax.studies.checkpoint_dynamics"
TASKS = ["bpb_docs", "bpb_code", "cloze_docs", "cloze_code", "arith", "induction", "facts"]
BASE_MIX = {"python_code": 0.7, "python_docs": 0.3}
SHARES = {"facts": 0.03, "arith": 0.03}

# per size: (hidden, layers, heads, kv heads, head_dim, mlp)
SCALES = {
    "smoke": dict(sizes={"xs": (32, 1, 2, 1, 16, 64), "s": (48, 1, 2, 1, 24, 96), "m": (64, 2, 2, 1, 32, 128)},
                  steps=8, batch=8, seq_len=64, lr=3e-3, log_spaced=4, vocab=4096, sample_mb=0.5,
                  facts_per_group=4, arith_examples=2000,
                  task_options=dict(num_items=16, facts_per_group=4, bpb_max_bytes=2048, num_sequences=8, span_len=8,
                                    batch_size=16, seq_len=64)),
    # the README table: about 0.6M, 1.8M and 6.3M parameters (vocab 4096), 2 CPU cores
    "cpu": dict(sizes={"0p6M": (64, 2, 4, 2, 16, 176), "1p8M": (128, 4, 4, 2, 32, 352),
                       "6p3M": (256, 6, 8, 2, 32, 704)},
                steps=400, batch=16, seq_len=128, lr=3e-3, log_spaced=14, vocab=4096, sample_mb=1.0,
                facts_per_group=20, arith_examples=20000,
                task_options=dict(num_items=120, bpb_max_bytes=32768, num_sequences=32, batch_size=32, seq_len=128)),
    # one H100 (not run): about 50M, 150M and 450M parameters, 32K vocabulary
    "gpu": dict(sizes={"50M": (512, 8, 8, 4, 64, 1408), "150M": (768, 16, 12, 4, 64, 2048),
                       "450M": (1280, 20, 20, 4, 64, 3456)},
                steps=4000, batch=64, seq_len=1024, lr=1e-3, log_spaced=30, vocab=32000, sample_mb=8.0,
                facts_per_group=20, arith_examples=200000,
                task_options=dict(batch_size=64, seq_len=1024)),
}


def _train_run(scale: dict, size: tuple, data_ref: str, knobs: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  hidden, layers, heads, kv, head_dim, mlp = size
  config = tiny_pretrain_config()
  config.model = presets.config_dict("tiny", vocab_size=scale["vocab"], hidden_size=hidden, num_layers=layers,
                                     num_heads=heads, num_kv_heads=kv, head_dim=head_dim, mlp_dim=mlp,
                                     max_seq_len=max(scale["seq_len"], 128))
  steps = knobs.get_ref("steps")
  config = configlib.apply_overrides(config, {
      "train.batch_size": scale["batch"], "train.seq_len": scale["seq_len"], "train.seed": 0,
      "train.progress_bar": False, "optimizer.min_lr_ratio": 0.1, "eval.every_steps": 0, "eval.batches": 0,
      "checkpoint.keep_last": 1})
  common.link(config, {"train.steps": steps, "optimizer.lr": knobs.get_ref("lr"),
                       "optimizer.warmup_steps": (steps + 19) // 20, "checkpoint.every_steps": steps,
                       "checkpoint.keep_log_spaced": knobs.get_ref("log_spaced")})
  with config.data.unlocked():
    config.data.prepared_dir = data_ref
    config.data.sources = pretraining.with_shares(BASE_MIX, SHARES)
  return config


def _paper() -> ml_collections.ConfigDict:
  study = common.new_study("checkpoint_dynamics", "paper", {"seeds": 1})
  checkpoints = ml_collections.FieldReference("/path/to/converted_checkpoints")
  tokenizer = ml_collections.FieldReference("/path/to/tokenizer.model")
  benchmarks = ml_collections.FieldReference("")
  study.paths = ml_collections.ConfigDict({
      "checkpoints": checkpoints,  # `yijax convert hf-to-yijax` of each released checkpoint, one dir each,
                                   # named by tokens seen (tokens-300B) or with tokens_seen in its metadata
      "tokenizer": tokenizer,
      "benchmarks": benchmarks,  # comma-separated lm-eval-style JSONL exports (ARC, HellaSwag, ...), one per task
  })
  study.stages.eval_released = {
      "kind": "python", "depends_on": [], "fn": f"{STAGES}:evaluate_run",
      "args": {"run": checkpoints, "tasks": ["bpb_docs", "bpb_code", "cloze_docs", "cloze_code", "arith",
                                              "induction"],
               "extra_tasks": benchmarks, "seed": 0, "tokenizer": tokenizer,
               "options": {"batch_size": 8, "seq_len": 2048}}}
  study.stages.report = {"kind": "python", "depends_on": ["eval_released"], "fn": f"{STAGES}:report",
                         "args": {"sizes": {"released": "eval_released"}, "params": {}}}
  return study


def get_config(scale="smoke"):
  if scale == "paper":
    return _paper()
  s = common.by_scale(scale, **SCALES, paper=None)
  config = common.new_study("checkpoint_dynamics", scale, {
      "seeds": 1,  # its stages are not seeded yet (issue 22): one training seed per size
      "data_dir": "",  # a prepared embedded corpus to copy ("" = prepare it)
      "steps": s["steps"], "lr": s["lr"], "log_spaced": s["log_spaced"]})
  knobs = config.study
  config.stages.data = {"kind": "python", "depends_on": [], "fn": f"{STAGES}:prepare_data",
                        "args": {"vocab_size": s["vocab"], "sample_mb": s["sample_mb"], "seed": 0,
                                 "facts_per_group": s["facts_per_group"], "arith_examples": s["arith_examples"],
                                 "from_dir": knobs.get_ref("data_dir")}}
  params, sizes = {}, {}
  for label, size in s["sizes"].items():
    run = _train_run(s, size, "{stage:data}/prepared", knobs)
    params[label] = models.param_count(configlib.model_config(run))["total"]
    config.stages[f"train_{label}"] = {"kind": "train", "depends_on": ["data"], "run": run}
    config.stages[f"eval_{label}"] = {
        "kind": "python", "depends_on": [f"train_{label}"], "fn": f"{STAGES}:evaluate_run",
        "args": {"run": f"{{stage:train_{label}}}", "tasks": TASKS, "seed": 0, "tokenizer": "",
                 "options": {"facts_per_group": s["facts_per_group"], **s["task_options"]}}}
    sizes[label] = f"eval_{label}"
  config.stages.report = {"kind": "python", "depends_on": list(sizes.values()), "fn": f"{STAGES}:report",
                          "args": {"sizes": sizes, "params": params}}
  return config
