"""G_stack (Du et al., NeurIPS 2024): train a small model for d tokens, stack it g times in depth, continue.

  yijax experiment --config=experiments/growth/config.py:cpu --workdir=runs/growth
  yijax experiment --config=experiments/growth/config.py:smoke --workdir=/tmp/growth_smoke
  yijax experiment --config=experiments/growth/config.py:paper --workdir=runs/gstack --dry_run

Arms, all with the same target model and the same total tokens D:
  scratch              the target from scratch for D tokens (warmup + cosine to a tenth)
  g4_d<p>              a target/4-layer model trained for d = p% of D (p = 1, 2.5, 5, 10, 20), stacked 4x
                       ([0..L/4-1] four times; embedding, final norm, head copied), then the target for
                       D - d with a fresh AdamW and a restarted warmup + cosine, continuing the data stream
  g2_d10, g8_d10       the same with g = 2 and 8 (smaller models of target/g layers)
  interp_g4_d10        each small layer repeated 4 times in place ([0,0,0,0,1,1,1,1,...])
  random_g4_d10        the stacked positions beyond the first copy freshly initialized (G_random)
The small models train at a constant LR (after warmup) of ~3.3x the target's peak (the paper: 1e-3 vs
3e-4), saving a checkpoint at every growth point, so one small run serves every d.
smoke: scratch and g4 at 10 and 20% only. paper: the 6L -> 24L TinyLlama-like setting (--dry_run).
"""



from yijax import configlib, models, surgery
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config

ANALYSIS = "yijax.studies.growth"
FRACTIONS = {"1": 0.01, "2p5": 0.025, "5": 0.05, "10": 0.10, "20": 0.20}
# arm -> (growth factor g, percent of D, order, new layers)
ARMS = {f"g4_d{p}": (4, p, "stack", "copy") for p in FRACTIONS}
ARMS.update({"g2_d10": (2, "10", "stack", "copy"), "g8_d10": (8, "10", "stack", "copy"),
             "interp_g4_d10": (4, "10", "interpolation", "copy"), "random_g4_d10": (4, "10", "stack", "random")})
SMOKE_ARMS = ("g4_d10", "g4_d20")

WIDTHS = {
    "smoke": {"hidden_size": 32, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16, "mlp_dim": 64},
    "cpu": {"hidden_size": 128, "num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "mlp_dim": 352},
    "gpu": {"hidden_size": 512, "num_heads": 8, "num_kv_heads": 2, "head_dim": 64, "mlp_dim": 1408},
    "paper": {"hidden_size": 2048, "num_heads": 32, "num_kv_heads": 4, "head_dim": 64, "mlp_dim": 5632,
              "vocab_size": 32000, "rope_theta": 10000.0, "max_seq_len": 2048},
}
# target layers, D in steps, batch (sequences), seq_len, eval every, eval batches, target peak lr
SCALES = {
    "smoke": (4, 10, 8, 32, 2, 1, 3e-3),
    "cpu": (8, 256, 16, 128, 16, 4, 3e-3),
    "gpu": (8, 3000, 32, 512, 100, 8, 1e-3),
    "paper": (24, 100_000_000_000 // (1024 * 2048), 1024, 2048, 1000, 16, 3e-4),
}
SMALL_LR_RATIO = 10 / 3


def d_steps(scale: str, percent: str) -> int:
  return max(int(round(SCALES[scale][1] * FRACTIONS[percent])), 1)


def _run(scale, layers, steps, lr, schedule, data_dir, init_from="", keep_steps=()):
  _, total, batch, seq_len, eval_every, eval_batches, _ = SCALES[scale]
  config = base_config("tiny")
  config.model = presets.config_dict("tiny", num_layers=layers, **{"max_seq_len": max(seq_len, 128), **WIDTHS[scale]})
  small = schedule == "constant"
  overrides = {
      "train.steps": steps, "train.batch_size": batch, "train.seq_len": seq_len, "train.progress_bar": False,
      "train.init_from": init_from, "train.init_data_state_from": init_from,
      "optimizer.lr": lr, "optimizer.schedule": schedule,
      "optimizer.warmup_steps": min(max(total // 20, 1), steps), "optimizer.min_lr_ratio": 0.1,
      "eval.every_steps": 0 if small else eval_every, "eval.batches": 0 if small else eval_batches,
      "eval.batch_size": batch, "checkpoint.every_steps": steps, "checkpoint.keep_last": 1,
      "checkpoint.keep_steps": sorted(keep_steps),
  }
  if scale in ("gpu", "paper"):
    overrides["model.dtype"] = "bfloat16"
  if scale == "paper":
    overrides.update({"model.remat_policy": "full", "mesh.data": 1, "mesh.fsdp": -1})
  config = configlib.apply_overrides(config, overrides)
  with config.data.unlocked():
    config.data.prepared_dir = data_dir
  return config


def get_config(scale="smoke"):
  target_layers, total, batch, seq_len, *_, peak_lr = common.by_scale(scale, **SCALES)
  study = common.new_study("growth", scale, {
      "seeds": 1,  # its stages are not seeded yet (issue 22)
      "data_dir": "",  # prepared data ("" = the embedded corpus, cached)
      "lr": peak_lr})  # the target's peak LR; the small models train at SMALL_LR_RATIO x it
  data = study.study.get_ref("data_dir")
  lr = study.study.get_ref("lr")
  arms = {a: ARMS[a] for a in (SMOKE_ARMS if scale == "smoke" else ARMS)}
  small_steps = {}
  for g, percent, *_ in arms.values():
    small_steps.setdefault(g, set()).add(d_steps(scale, percent))
  for g, steps in small_steps.items():
    study.stages[f"small_g{g}"] = {"kind": "train", "depends_on": [], "run": _run(
        scale, target_layers // g, max(steps), lr * SMALL_LR_RATIO, "constant", data, keep_steps=steps)}
  study.stages.scratch = {"kind": "train", "depends_on": [], "run": _run(scale, target_layers, total, lr, "cosine",
                                                                         data)}
  grow_args = {}
  for arm, (g, percent, order, new_layers) in arms.items():
    d = d_steps(scale, percent)
    grow_args[arm] = {"source": f"{{stage:small_g{g}}}/checkpoints/{d}", "small_stage": f"small_g{g}", "d_steps": d,
                      "times": g, "order": order, "new_layers": new_layers}
    study.stages[arm] = {"kind": "train", "depends_on": ["grow"], "run": _run(
        scale, target_layers, total - d, lr, "cosine", data, init_from=f"{{stage:grow}}/{arm}")}
  study.stages.grow = {"kind": "python", "depends_on": [f"small_g{g}" for g in small_steps],
                       "fn": ANALYSIS + ":grow_stage", "args": {"arms": grow_args}}
  target = configlib.model_config(study.stages.scratch.run)
  tokens = total * batch * seq_len
  study.stages.report = {"kind": "python", "depends_on": ["scratch"] + list(arms), "fn": ANALYSIS + ":report_stage",
                         "args": {"arms": list(arms), "target_params": models.param_count(target)["total"],
                                  "target_tokens": tokens,
                                  "formula_d_tokens": surgery.growth_tokens(models.param_count(target)["total"],
                                                                            tokens)}}
  return study
