"""Depth up-scaling (Yi-9B from Yi-6B): what duplicating a block of layers buys a source model at its plateau.

  yijax experiment --config=experiments/depth_upscaling/config.py:smoke --workdir=/tmp/du_smoke
  nice -n 5 yijax experiment --config=experiments/depth_upscaling/config.py:cpu --workdir=runs/depth_upscaling \\
      --results_dir=experiments/depth_upscaling/results/cpu
  yijax experiment --config=experiments/depth_upscaling/config.py:paper --workdir=runs/yi_9b --dry_run \\
      --config.study.hf_dir=/models/Yi-6B --config.study.data_dir=/data/yi_mix --config.study.data_dir_stage2=/data/yi_mix_code_math

smoke / cpu / gpu, every stage but the report seeded (paired seeds: seed i of every arm starts from source seed i
and continues its data stream; yijax/studies/depth_upscaling.py):
  pretrain           an 8-layer source, warmup + cosine to a tenth, long enough to reach a held-out plateau
  cosine             layer cosine at every kept checkpoint; the candidate blocks of half the layers (first layer
                     and last `exclude_last` excluded: the positional analogue of Yi's block, layers 3..6 of 8 as
                     12..27 of 32, is one of them, and so is SOLAR's middle block); the plateau gate on the
                     source's held-out loss (the study stops when the source is still improving, where enforced)
  grow               12-layer models: Yi's rule (the candidate of highest mean cosine, duplicated right after
                     itself) and SOLAR's order (the middle block: [0..5] + [2..7]); loss right after growth
  continue_yi_rule, continue_solar, continue_source (the 8-layer source continued: the control)
                     continued pretraining from the source's data position at a constant tenth of the peak LR,
                     the batch doubling on a plateau (up to 4x), each stage `continue_tokens` long (in tokens:
                     batch growth does not stretch it)
  scratch_12l        the grown size trained from scratch (the source's recipe) for the source's tokens plus the
                     continuation's: the grown models' total tokens
  report             claims over seeds: grown vs source continued at matched continuation tokens, grown vs the
                     12-layer model from scratch at matched total tokens, Yi's block vs SOLAR's
paper: Yi-6B imported from Hugging Face -> Yi-9B by [0..27] + [12..27] + [28..31] (48 layers, 8.83B
parameters), then 0.4T tokens of Yi-6B's mixture and 0.4T with more code and math at a constant 3e-5, the
batch growing from 4M tokens on plateaus; each stage ends at its 0.4T tokens (train.max_tokens).
"""

import ml_collections

from yijax import configlib
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config

ANALYSIS = "yijax.studies.depth_upscaling"
SOURCE_LAYERS, GROWN_LAYERS = 8, 12
# arm -> block policy (surgery.select_block): Yi's rule and SOLAR's order (the middle block)
BLOCKS = {"yi_rule": "max_cosine", "solar": "middle"}
CONTINUED = ["yi_rule", "solar", "source"]

SCALES = {
    # seconds on 2 CPU cores: every stage, 2 seeds, the embedded corpus's 4096 pieces; the gate recorded only
    "smoke": dict(model=dict(hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64),
                  pretrain_steps=8, continue_steps=6, batch=8, seq_len=32, eval_every=2, eval_batches=1, lr=3e-3,
                  kept=4, seeds=2, plateau_window=0.25, plateau_tolerance=0.01, enforce_plateau=False),
    # the README's numbers (about 37 minutes on 2 cores): 8 x 64, vocab 512 (0.44M parameters), 1.84M pretraining
    # tokens (~4 per parameter) + 0.33M continuation tokens per arm (18% of pretraining), 2 seeds
    "cpu": dict(model=dict(vocab_size=512, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=176),
                pretrain_steps=896, continue_steps=160, batch=16, seq_len=128, eval_every=32, continue_eval_every=16,
                eval_batches=4, lr=3e-3, kept=8, seeds=2, plateau_window=0.25, plateau_tolerance=0.02,
                enforce_plateau=True),
    # one H100 (not run)
    "gpu": dict(model=dict(vocab_size=4096, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64, mlp_dim=1408,
                           dtype="bfloat16"),
                pretrain_steps=8000, continue_steps=2000, batch=32, seq_len=512, eval_every=200, eval_batches=8,
                lr=1e-3, kept=8, seeds=2, plateau_window=0.25, plateau_tolerance=0.01, enforce_plateau=True),
}
# Yi-9B: each continued-pretraining stage is 0.4T tokens, the batch starting at 4M tokens (1024 x 4096)
PAPER_STAGE_TOKENS = 400_000_000_000
PAPER_BATCH, PAPER_SEQ_LEN = 1024, 4096


def yi_analogue(num_layers: int) -> list[int]:
  """Yi-9B's block (layers 12..27 of Yi-6B's 32) at the same relative position in a model of num_layers."""
  return [round(12 * num_layers / 32), round(28 * num_layers / 32)]


def exclude_last(num_layers: int) -> int:
  """Yi excludes the last two layers; a small model excludes fewer, so that Yi's own position stays a candidate."""
  return min(2, num_layers - yi_analogue(num_layers)[1])


def _run(s: dict, layers: int, steps, lr, schedule: str, data_dir, init_from="", grow_batch=False, max_tokens=0,
         keep_checkpoints=False, smoke=False):
  config = base_config("tiny")
  config.model = presets.config_dict("tiny", num_layers=layers, **{"max_seq_len": max(s["seq_len"], 128), **s["model"]})
  every = max(s["pretrain_steps"] // s["kept"], 1)
  overrides = {
      "train.batch_size": s["batch"], "train.seq_len": s["seq_len"], "train.progress_bar": False,
      "train.init_from": init_from, "train.init_data_state_from": init_from, "train.max_tokens": max_tokens,
      "optimizer.lr": lr, "optimizer.schedule": schedule,
      "optimizer.warmup_steps": max(s["pretrain_steps"] // 20, 1) if schedule == "cosine" else 0,
      "data.sources": {"python_code": 0.7, "python_docs": 0.3},
      "eval.every_steps": s.get("continue_eval_every", s["eval_every"]) if grow_batch else s["eval_every"],
      "eval.batches": s["eval_batches"], "eval.batch_size": s["batch"],
      "checkpoint.every_steps": every if keep_checkpoints else 0, "checkpoint.keep_every": every if keep_checkpoints else 0,
      "checkpoint.keep_log_spaced": 6 if keep_checkpoints and not smoke else 0, "checkpoint.keep_last": 1,
  }
  if grow_batch:
    overrides.update({"train.batch_growth.factor": 2, "train.batch_growth.patience": 2,
                      "train.batch_growth.ema": 0.5, "train.batch_growth.max_batch_size": 4 * s["batch"]})
    if smoke:  # exercise the growth: every evaluation counts as a stall
      overrides.update({"train.batch_growth.patience": 1, "train.batch_growth.min_delta": 100.0})
  config = configlib.apply_overrides(config, overrides)
  common.link(config, {"train.steps": steps, "data.prepared_dir": data_dir})
  if not keep_checkpoints:
    common.link(config, {"checkpoint.every_steps": steps})
  return config


def _small_scale(scale: str) -> ml_collections.ConfigDict:
  s = SCALES[scale]
  tokens_per_step = s["batch"] * s["seq_len"]
  study = common.new_study("depth_upscaling", scale, {
      "seeds": s["seeds"],  # paired seeds: source, grown models, continuations, scratch_12l
      "data_dir": "",  # prepared data ("" = the embedded corpus, cached, with the model's vocabulary)
      "pretrain_steps": s["pretrain_steps"],
      "continue_tokens": s["continue_steps"] * tokens_per_step,  # each continuation, in (real) tokens
      "lr": s["lr"]})  # the source's peak LR; every continuation runs at a constant tenth of it
  knobs = study.study
  data, lr, smoke = knobs.get_ref("data_dir"), knobs.get_ref("lr"), scale == "smoke"
  pretrain_steps, continue_tokens = knobs.get_ref("pretrain_steps"), knobs.get_ref("continue_tokens")
  # the continuations' step bound at the base batch: batch growth ends them earlier, at continue_tokens
  continue_steps = continue_tokens // tokens_per_step + 1
  study.stages.pretrain = {"kind": "train", "depends_on": [], "seeded": True, "run": _run(
      s, SOURCE_LAYERS, pretrain_steps, lr, "cosine", data, keep_checkpoints=True, smoke=smoke)}
  study.stages.cosine = {"kind": "python", "depends_on": ["pretrain"], "seeded": True, "fn": ANALYSIS + ":cosine_stage",
                         "args": {"source": "{stage:pretrain}", "block_size": SOURCE_LAYERS // 2,
                                  "policies": dict(BLOCKS), "exclude_first": 1,
                                  "exclude_last": exclude_last(SOURCE_LAYERS), "yi_analogue": yi_analogue(SOURCE_LAYERS),
                                  "plateau": {"window": s["plateau_window"], "tolerance": s["plateau_tolerance"],
                                              "enforce": s["enforce_plateau"]}}}
  study.stages.grow = {"kind": "python", "depends_on": ["cosine"], "seeded": True, "fn": ANALYSIS + ":grow_stage",
                       "args": {"source": "{stage:pretrain}", "blocks": {}, "eval_batches": s["eval_batches"]}}
  for arm in CONTINUED:
    source = "{stage:pretrain}" if arm == "source" else f"{{stage:grow}}/{arm}"
    layers = SOURCE_LAYERS if arm == "source" else GROWN_LAYERS
    study.stages[f"continue_{arm}"] = {"kind": "train", "depends_on": ["grow"], "seeded": True, "run": _run(
        s, layers, continue_steps, lr / 10, "constant", data, source, True, continue_tokens, smoke=smoke)}
  study.stages.scratch_12l = {"kind": "train", "depends_on": [], "seeded": True, "run": _run(
      s, GROWN_LAYERS, pretrain_steps + continue_tokens // tokens_per_step, lr, "cosine", data)}
  study.stages.report = {"kind": "python", "depends_on": [f"continue_{a}" for a in CONTINUED] + ["scratch_12l"],
                         "fn": ANALYSIS + ":report_stage",
                         "args": {"arms": list(CONTINUED), "grown": list(BLOCKS), "scratch": "scratch_12l"}}
  return study


def _paper_run(init_from: str, data_dir, stage_tokens):
  config = base_config("yi_9b")
  config = configlib.apply_overrides(config, {
      "model.dtype": "bfloat16", "model.remat_policy": "full", "train.batch_size": PAPER_BATCH,
      "train.seq_len": PAPER_SEQ_LEN, "train.init_from": init_from, "train.progress_bar": False,
      "optimizer.lr": 3e-5, "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
      "train.batch_growth.factor": 2, "train.batch_growth.patience": 3, "train.batch_growth.ema": 0.9,
      "train.batch_growth.max_batch_size": 4096, "eval.every_steps": 1000, "eval.batches": 16,
      "checkpoint.every_steps": 1000, "mesh.data": 1, "mesh.fsdp": -1})
  # the stage ends at stage_tokens; train.steps (the same tokens at the starting batch) only bounds it
  common.link(config, {"train.max_tokens": stage_tokens, "train.steps": stage_tokens // (PAPER_BATCH * PAPER_SEQ_LEN),
                       "data.prepared_dir": data_dir})
  return config


def _paper() -> ml_collections.ConfigDict:
  study = common.new_study("depth_upscaling", "paper", {
      "seeds": 1, "hf_dir": "", "data_dir": "", "data_dir_stage2": "",
      "stage_tokens": PAPER_STAGE_TOKENS})  # each continued-pretraining stage (Yi-9B: 0.4T + 0.4T)
  knobs = study.study
  tokens = knobs.get_ref("stage_tokens")
  study.stages.import_yi_6b = {"kind": "python", "depends_on": [], "fn": ANALYSIS + ":import_stage",
                               "args": {"hf_dir": knobs.get_ref("hf_dir"), "data_dir": knobs.get_ref("data_dir"),
                                        "data_dir_stage2": knobs.get_ref("data_dir_stage2")}}
  study.stages.cosine = {"kind": "python", "depends_on": ["import_yi_6b"], "fn": ANALYSIS + ":cosine_stage",
                         "args": {"source": "{stage:import_yi_6b}/model", "block_size": 16,
                                  "policies": {"yi_rule": "max_cosine"}, "exclude_first": 1, "exclude_last": 2,
                                  "yi_analogue": yi_analogue(32), "plateau": {}}}
  study.stages.grow = {"kind": "python", "depends_on": ["cosine"], "fn": ANALYSIS + ":grow_stage",
                       "args": {"source": "{stage:import_yi_6b}/model", "blocks": {"yi_9b": [12, 28]},
                                "eval_batches": 0}}
  study.stages.continue_stage1 = {"kind": "train", "depends_on": ["grow"],
                                  "run": _paper_run("{stage:grow}/yi_9b", knobs.get_ref("data_dir"), tokens)}
  study.stages.continue_stage2 = {"kind": "train", "depends_on": ["continue_stage1"],
                                  "run": _paper_run("{stage:continue_stage1}", knobs.get_ref("data_dir_stage2"), tokens)}
  return study


def get_config(scale="smoke"):
  return common.by_scale(scale, **{name: _small_scale for name in SCALES}, paper=lambda _: _paper())(scale)
