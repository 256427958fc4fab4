"""G_stack (Du et al., NeurIPS 2024): train a small model for d tokens, stack it g = 4 times in depth, continue.

  yijax experiment --config=experiments/growth/config.py:smoke --workdir=/tmp/growth_smoke
  nice -n 5 yijax experiment --config=experiments/growth/config.py:cpu --workdir=runs/growth \\
      --results_dir=experiments/growth/results/cpu
  yijax experiment --config=experiments/growth/config.py:paper --workdir=runs/gstack --dry_run

A target whose cost is in its layers (cpu: 8 layers x 64, vocabulary 512: 85% of its parameters in the
layers, as in the paper's 410M model), D target tokens in all for every arm, paired seeds (seed i of every
arm shares the data order; the grown arms continue their small model's data stream):
  small_g4        the target/4-layer small model at a constant LR (after warmup) of ~3.3x the target's peak
                  (the paper: 1e-3 vs 3e-4), a checkpoint kept at each growth point                  seeded
  scratch         the target from scratch for D tokens (warmup + cosine to a tenth)                   seeded
  grow            each arm's grown model, from its seed's small model at d                            seeded
  g4_d5, g4_d10   G_stack: the small model after d = 5% / 10% of D stacked 4x ([0..L/4-1] four times;
                  embedding, final norm, head copied), then the target for D - d with a fresh AdamW
                  and a restarted warmup + cosine, continuing the data stream                         seeded
  random_g4_d10   G_random: the stacked positions beyond the first copy freshly initialized           seeded
  report          speedup (tokens and FLOPs to reach scratch's seed-mean final loss, small model
                  included) per seed, mean +- se; computed claims (yijax/analysis/growth.py)
smoke: a micro model, a few steps, 2 seeds. paper: the 6L -> 24L TinyLlama-like setting (--dry_run).
"""

from yijax import configlib, models, surgery
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config

ANALYSIS = "yijax.studies.growth"
GROWTH_FACTOR = 4
PERCENTS = {"5": 0.05, "10": 0.10}
# arm -> (percent of D at which the small model is grown, how the new layers are filled)
ARMS = {"g4_d5": ("5", "copy"), "g4_d10": ("10", "copy"), "random_g4_d10": ("10", "random")}
SMALL_LR_RATIO = 10 / 3

SCALES = {
    # seconds on 2 CPU cores: every stage, 2 seeds (the claims' se computed), the embedded corpus's 4096 pieces
    "smoke": dict(model=dict(hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64),
                  target_layers=4, steps=20, batch=8, seq_len=32, eval_every=3, eval_batches=1, lr=3e-3, seeds=2),
    # the README's numbers (about 35 minutes on 2 cores): 8 x 64, vocab 512, D = 512 x 16 x 128 = 1.05M tokens
    "cpu": dict(model=dict(vocab_size=512, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=176),
                target_layers=8, steps=512, batch=16, seq_len=128, eval_every=32, eval_batches=4, lr=3e-3, seeds=3),
    # one H100 (not run): 8 x 512, 200M tokens
    "gpu": dict(model=dict(vocab_size=4096, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64, mlp_dim=1408,
                           dtype="bfloat16"),
                target_layers=8, steps=12_000, batch=32, seq_len=512, eval_every=400, eval_batches=8, lr=1e-3, seeds=3),
    # the paper's 6L -> 24L TinyLlama-like target (1.19B parameters), D = 100B tokens
    "paper": dict(model=dict(vocab_size=32000, hidden_size=2048, num_heads=32, num_kv_heads=4, head_dim=64,
                             mlp_dim=5632, rope_theta=10000.0, max_seq_len=2048, dtype="bfloat16", remat_policy="full"),
                  target_layers=24, steps=100_000_000_000 // (1024 * 2048), batch=1024, seq_len=2048, eval_every=1000,
                  eval_batches=16, lr=3e-4, seeds=1),
}


def d_steps(scale: str, percent: str) -> int:
  """The growth point d in steps of the target's batch (the small model trains on the same batches)."""
  return max(int(round(SCALES[scale]["steps"] * PERCENTS[percent])), 1)


def _run(scale: str, layers: int, steps: int, lr, schedule: str, data_dir, init_from="", keep_steps=()):
  s = SCALES[scale]
  config = base_config("tiny")
  config.model = presets.config_dict("tiny", num_layers=layers, **{"max_seq_len": max(s["seq_len"], 128), **s["model"]})
  small = schedule == "constant"
  overrides = {
      "train.steps": steps, "train.batch_size": s["batch"], "train.seq_len": s["seq_len"], "train.progress_bar": False,
      "train.init_from": init_from, "train.init_data_state_from": init_from,
      "optimizer.lr": lr, "optimizer.schedule": schedule,
      "optimizer.warmup_steps": min(max(s["steps"] // 20, 1), steps), "optimizer.min_lr_ratio": 0.1,
      "eval.every_steps": 0 if small else s["eval_every"], "eval.batches": 0 if small else s["eval_batches"],
      "eval.batch_size": s["batch"], "checkpoint.every_steps": steps, "checkpoint.keep_last": 1,
      "checkpoint.keep_steps": sorted(keep_steps),
  }
  if scale == "paper":
    overrides.update({"mesh.data": 1, "mesh.fsdp": -1})
  config = configlib.apply_overrides(config, overrides)
  with config.data.unlocked():
    config.data.prepared_dir = data_dir
  return config


def get_config(scale="smoke"):
  s = common.by_scale(scale, **SCALES)
  study = common.new_study("growth", scale, {
      "seeds": s["seeds"],  # paired seeds of every arm (small model, scratch, grown)
      "data_dir": "",  # prepared data ("" = the embedded corpus, cached, with the model's vocabulary)
      "lr": s["lr"]})  # the target's peak LR; the small model trains at SMALL_LR_RATIO x it
  data, lr = study.study.get_ref("data_dir"), study.study.get_ref("lr")
  target_layers, total = s["target_layers"], s["steps"]
  small_layers = target_layers // GROWTH_FACTOR
  points = sorted({d_steps(scale, percent) for percent, _ in ARMS.values()})
  study.stages.small_g4 = {"kind": "train", "depends_on": [], "seeded": True, "run": _run(
      scale, small_layers, max(points), lr * SMALL_LR_RATIO, "constant", data, keep_steps=points)}
  study.stages.scratch = {"kind": "train", "depends_on": [], "seeded": True,
                          "run": _run(scale, target_layers, total, lr, "cosine", data)}
  grow_args = {}
  for arm, (percent, new_layers) in ARMS.items():
    d = d_steps(scale, percent)
    grow_args[arm] = {"source": f"{{stage:small_g4}}/checkpoints/{d}", "small_stage": "small_g4", "d_steps": d,
                      "percent": float(percent), "times": GROWTH_FACTOR, "order": "stack", "new_layers": new_layers}
  study.stages.grow = {"kind": "python", "depends_on": ["small_g4"], "seeded": True, "fn": ANALYSIS + ":grow_stage",
                       "args": {"arms": grow_args}}
  for arm, (percent, _) in ARMS.items():
    study.stages[arm] = {"kind": "train", "depends_on": ["grow"], "seeded": True, "run": _run(
        scale, target_layers, total - d_steps(scale, percent), lr, "cosine", data, init_from=f"{{stage:grow}}/{arm}")}
  target = configlib.model_config(study.stages.scratch.run)
  counts = models.param_count(target)
  tokens = total * s["batch"] * s["seq_len"]
  study.stages.report = {"kind": "python", "depends_on": ["scratch", "grow"] + list(ARMS),
                         "fn": ANALYSIS + ":report_stage",
                         "args": {"arms": list(ARMS), "stack_arm": "g4_d10", "random_arm": "random_g4_d10",
                                  "target_params": counts["total"],
                                  "target_layer_params": counts["non_embedding"],
                                  "target_tokens": tokens,
                                  "formula_d_tokens": surgery.growth_tokens(counts["total"], tokens)}}
  return study
