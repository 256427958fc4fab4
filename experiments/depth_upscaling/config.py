"""Depth up-scaling (Yi-9B from Yi-6B): duplicate the block of layers that changes its input least.

  yijax experiment --config=experiments/depth_upscaling/config.py:cpu --workdir=runs/depth_upscaling
  yijax experiment --config=experiments/depth_upscaling/config.py:smoke --workdir=/tmp/du_smoke
  yijax experiment --config=experiments/depth_upscaling/config.py:paper --workdir=runs/yi_9b --dry_run \
      --config.study.hf_dir=/models/Yi-6B --config.study.data_dir=/data/yi_mix --config.study.data_dir_stage2=/data/yi_mix_code_math

smoke / cpu / gpu: an 8-layer model pretrained with warmup + cosine (layer cosine
measured at every kept checkpoint), grown to 12 layers by duplicating a block of
half its layers right after the originals, chosen by Yi's rule (the highest mean
input/output cosine, first and last two layers excluded: `max_cosine`) and by the
opposite (`min_cosine`); with 8 layers these are the only two candidate blocks and
one of them is the middle block (SOLAR-like), which the report names. Each grown
model and the 8-layer control continue the pretraining data stream at a constant
LR of a tenth of the pretraining peak, the batch doubling (up to 4x) whenever the
smoothed held-out loss stops falling.
paper: Yi-6B imported from Hugging Face -> Yi-9B by [0..27] + [12..27] + [28..31]
(48 layers, 8.83B parameters), then 0.4T tokens of Yi-6B's mixture and 0.4T with
more code and math at a constant 3e-5, batch 4M tokens growing on plateaus.
"""


import ml_collections

from yijax import configlib
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config

ANALYSIS = "yijax.studies.depth_upscaling"
ARMS = {"max_cosine": "max_cosine", "min_cosine": "min_cosine"}  # arm -> block policy (surgery.select_block)

WIDTHS = {
    "smoke": {"hidden_size": 32, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16, "mlp_dim": 64},
    "cpu": {"hidden_size": 128, "num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "mlp_dim": 352},
    "gpu": {"hidden_size": 512, "num_heads": 8, "num_kv_heads": 2, "head_dim": 64, "mlp_dim": 1408},
}
# pretrain steps, continue steps, batch (sequences), seq_len, eval every, eval batches, peak lr, kept checkpoints
SCALES = {
    "smoke": (8, 6, 8, 32, 2, 1, 3e-3, 4),
    "cpu": (1000, 500, 16, 128, 50, 4, 3e-3, 8),
    "gpu": (3000, 1500, 32, 512, 100, 8, 1e-3, 8),
}


def _run(scale, layers, steps, lr, schedule, data_dir, init_from="", data_state_from="", grow_batch=False):
  pretrain_steps, _, batch, seq_len, eval_every, eval_batches, _, kept = SCALES[scale]
  config = base_config("tiny")
  config.model = presets.config_dict("tiny", num_layers=layers, max_seq_len=max(seq_len, 128), **WIDTHS[scale])
  every = max(pretrain_steps // kept, 1)
  overrides = {
      "train.steps": steps, "train.batch_size": batch, "train.seq_len": seq_len, "train.progress_bar": False,
      "train.init_from": init_from, "train.init_data_state_from": data_state_from,
      "optimizer.lr": lr, "optimizer.schedule": schedule,
      "optimizer.warmup_steps": (steps + 19) // 20 if schedule == "cosine" else 0,
      "data.sources": {"python_code": 0.7, "python_docs": 0.3},
      "eval.every_steps": eval_every, "eval.batches": eval_batches, "eval.batch_size": batch,
      "checkpoint.every_steps": every if not init_from else steps, "checkpoint.keep_every": every,
      "checkpoint.keep_log_spaced": 0 if init_from or scale == "smoke" else 6, "checkpoint.keep_last": 1,
  }
  if grow_batch:
    overrides.update({"train.batch_growth.factor": 2, "train.batch_growth.patience": 2,
                      "train.batch_growth.ema": 0.5, "train.batch_growth.max_batch_size": 4 * batch})
    if scale == "smoke":  # exercise the growth: every evaluation counts as a stall
      overrides.update({"train.batch_growth.patience": 1, "train.batch_growth.min_delta": 100.0})
  if scale == "gpu":
    overrides["model.dtype"] = "bfloat16"
  config = configlib.apply_overrides(config, overrides)
  with config.data.unlocked():
    config.data.prepared_dir = data_dir
  return config


def _paper_run(steps, init_from, data_dir):
  config = base_config("yi_9b")
  config = configlib.apply_overrides(config, {
      "model.dtype": "bfloat16", "model.remat_policy": "full", "train.batch_size": 1024,
      "train.seq_len": 4096, "train.init_from": init_from, "train.progress_bar": False,
      "optimizer.lr": 3e-5, "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
      "train.batch_growth.factor": 2, "train.batch_growth.patience": 3, "train.batch_growth.ema": 0.9,
      "train.batch_growth.max_batch_size": 4096, "eval.every_steps": 1000, "eval.batches": 16,
      "checkpoint.every_steps": 1000, "mesh.data": 1, "mesh.fsdp": -1})
  common.link(config, {"train.steps": steps})
  with config.data.unlocked():
    config.data.prepared_dir = data_dir
  return config


def _paper() -> ml_collections.ConfigDict:
  study = common.new_study("depth_upscaling", "paper", {
      "seeds": 1, "hf_dir": "", "data_dir": "", "data_dir_stage2": "",
      "stage_tokens": 400_000_000_000})  # each continued-pretraining stage (Yi-9B: 0.4T + 0.4T)
  knobs = study.study
  steps = knobs.get_ref("stage_tokens") // (1024 * 4096)  # at the starting 4M-token batch
  study.stages.import_yi_6b = {"kind": "python", "depends_on": [], "fn": ANALYSIS + ":import_stage",
                               "args": {"hf_dir": knobs.get_ref("hf_dir"), "data_dir": knobs.get_ref("data_dir"),
                                        "data_dir_stage2": knobs.get_ref("data_dir_stage2")}}
  study.stages.cosine = {"kind": "python", "depends_on": ["import_yi_6b"], "fn": ANALYSIS + ":cosine_stage",
                         "args": {"source": "{stage:import_yi_6b}/model", "block_size": 16,
                                  "policies": {"yi_rule": "max_cosine"}}}
  study.stages.grow = {"kind": "python", "depends_on": ["cosine"], "fn": ANALYSIS + ":grow_stage",
                       "args": {"source": "{stage:import_yi_6b}/model", "blocks": {"yi_9b": [12, 28]},
                                "eval_batches": 0}}
  study.stages.continue_stage1 = {"kind": "train", "depends_on": ["grow"],
                                  "run": _paper_run(steps, "{stage:grow}/yi_9b", knobs.get_ref("data_dir"))}
  study.stages.continue_stage2 = {"kind": "train", "depends_on": ["continue_stage1"],
                                  "run": _paper_run(steps, "{stage:continue_stage1}", knobs.get_ref("data_dir_stage2"))}
  return study


def get_config(scale="smoke"):
  if scale == "paper":
    return _paper()
  pretrain_steps, continue_steps, *_, peak_lr, _ = common.by_scale(scale, **SCALES, paper=None)
  study = common.new_study("depth_upscaling", scale, {
      "seeds": 1,  # its stages are not seeded yet (issue 22)
      "data_dir": "",  # prepared data ("" = the embedded corpus, cached)
      "pretrain_steps": pretrain_steps, "continue_steps": continue_steps,
      "lr": peak_lr})  # the source's peak LR; every continuation runs at a constant tenth of it
  knobs = study.study
  data, lr = knobs.get_ref("data_dir"), knobs.get_ref("lr")
  study.stages.pretrain = {"kind": "train", "depends_on": [], "run": _run(
      scale, 8, knobs.get_ref("pretrain_steps"), lr, "cosine", data)}
  study.stages.cosine = {"kind": "python", "depends_on": ["pretrain"], "fn": ANALYSIS + ":cosine_stage",
                         "args": {"source": "{stage:pretrain}", "block_size": 4, "policies": dict(ARMS)}}
  study.stages.grow = {"kind": "python", "depends_on": ["cosine"], "fn": ANALYSIS + ":grow_stage",
                       "args": {"source": "{stage:pretrain}", "blocks": {}, "eval_batches": SCALES[scale][5]}}
  continue_steps = knobs.get_ref("continue_steps")
  for arm in ARMS:
    study.stages[f"continue_{arm}"] = {"kind": "train", "depends_on": ["grow"], "run": _run(
        scale, 12, continue_steps, lr / 10, "constant", data, f"{{stage:grow}}/{arm}", f"{{stage:grow}}/{arm}", True)}
  study.stages.continue_control = {"kind": "train", "depends_on": ["pretrain"], "run": _run(
      scale, 8, continue_steps, lr / 10, "constant", data, "{stage:pretrain}", "{stage:pretrain}", True)}
  study.stages.report = {"kind": "python", "depends_on": [f"continue_{a}" for a in ARMS] + ["continue_control"],
                         "fn": ANALYSIS + ":report_stage", "args": {"arms": list(ARMS) + ["control"]}}
  return study
