"""The stability gap of continual pretraining and three ways to close it (Guo et al. 2024, arXiv 2406.14833).

  yijax experiment --config=experiments/stability_gap/config.py:smoke --workdir=/tmp/stability_gap_smoke
  nice -n 5 yijax experiment --config=experiments/stability_gap/config.py:cpu --workdir=runs/stability_gap
  yijax experiment --config=experiments/stability_gap/config.py:paper --workdir=runs/sg_paper --dry_run

Stages: data (synthetic worlds A/B + the embedded corpus, a tokenizer, the domain
corpus quality-scored into `domain_hq`, QA task files; yijax/studies/stability_gap.py)
-> pretrain (a small Yi-architecture model: embedded corpus as "web" + world A
biographies and QA + a little world-B text) -> base_eval (step 0 of every curve)
-> the arms, each a continual-pretraining run from the pretrained model, with the
tasks scored in-process ~50 times -> report (results.json, report.md, PNGs).
Arms (the baseline schedule is rewarm + redecay: linear warmup from 0 over 10% of
the steps to the peak, then cosine down to 10% of it):
  full_lr_hi / full_lr_lo  the whole domain corpus for one epoch at two peak learning rates
  subset_4ep               (1) a random 10% subset of the domain, 4 epochs (40% of the tokens)
  hq_4ep                   (1)+(2) the 10% of domain tokens with the lowest n-gram perplexity, 4 epochs
  hq_mixture_4ep           (1)+(2)+(3) the pretraining mixture with its web share (python sources)
                           replaced by domain_hq; the other sources resampled (25%) every epoch
  replay10                 the whole domain + 10% replay of the pretraining mixture
  no_rewarm                the whole domain at the pretraining's final LR, constant (no rewarm, no redecay)
  freeze_top / freeze_bottom  full_lr_hi with the top / bottom quarter of the layers frozen
"""

import ml_collections

from yijax import configlib
from yijax.data.mixture import steps_for_epochs
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config

PRETRAIN_MIX = {"python_code": 0.45, "python_docs": 0.15, "world_a_bios": 0.24, "world_a_qa": 0.15,
                "world_b_intro": 0.01}
WEB = ["python_code", "python_docs"]
GENERAL = ["world_a_bios", "world_a_qa", "world_b_intro"]
TASKS = ["{stage:data}/tasks/domain_qa.jsonl", "{stage:data}/tasks/general_qa.jsonl"]
KEYS = {"domain_acc": "tasks/domain_qa/acc", "general_acc": "tasks/general_qa/acc", "domain_loss": "loss/domain",
        "general_bpb": "tasks/bpb_docs/bits_per_byte", "update_ratio": "relative_update/bottom_over_top"}

SCALES = {
    # seconds on 2 CPU cores: every stage, a micro model, four arms of a few steps
    "smoke": dict(
        model=dict(num_layers=4, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
                   vocab_size=512, max_seq_len=64),
        data=dict(world_a=16, world_b=12, reference=12, a_bios_per_person=2, domain_tokens=4000,
                  corrupt_fraction=0.3, hq_fraction=0.2, vocab_size=512, embedded_max_docs=8,
                  tokenizer_embedded_mb=0.05),
        batch=8, seq_len=64, pretrain_steps=4, pretrain_lr=3e-3, lrs=(1e-3, 3e-4), evals=2, freeze=1,
        extra_tasks=[], arms=["full_lr_hi", "hq_mixture_4ep", "replay10", "freeze_top"], fixed_steps=4),
    # the README table: 8 layers x 96, ~1 hour on 2 busy cores
    "cpu": dict(
        model=dict(num_layers=8, hidden_size=96, num_heads=4, num_kv_heads=2, head_dim=24, mlp_dim=256,
                   vocab_size=1024, max_seq_len=128),
        data=dict(world_a=160, world_b=120, reference=80, a_bios_per_person=4, domain_tokens=240_000,
                  corrupt_fraction=0.3, hq_fraction=0.1, vocab_size=1024, embedded_max_docs=0,
                  tokenizer_embedded_mb=1.0),
        batch=8, seq_len=128, pretrain_steps=1200, pretrain_lr=3e-3, lrs=(1e-3, 3e-4), evals=50, freeze=2,
        extra_tasks=["bpb_docs"], arms=None, fixed_steps=0),
    # one H100, under 25 minutes (not measured): a 12-layer x 512 model, 10x the people, 4M domain tokens
    "gpu": dict(
        model=dict(num_layers=12, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64, mlp_dim=1408,
                   vocab_size=4096, max_seq_len=512, dtype="bfloat16"),
        data=dict(world_a=1600, world_b=1200, reference=400, a_bios_per_person=4, domain_tokens=4_000_000,
                  corrupt_fraction=0.3, hq_fraction=0.1, vocab_size=4096, embedded_max_docs=0,
                  tokenizer_embedded_mb=2.0),
        batch=32, seq_len=512, pretrain_steps=3000, pretrain_lr=1e-3, lrs=(3e-4, 1e-4), evals=60, freeze=3,
        extra_tasks=["bpb_docs", "cloze_docs"], arms=None, fixed_steps=0),
}
ARMS = ["full_lr_hi", "full_lr_lo", "subset_4ep", "hq_4ep", "hq_mixture_4ep", "replay10", "no_rewarm",
        "freeze_top", "freeze_bottom"]
LABELS = {"full_lr_hi": "whole domain, 1 epoch, high LR", "full_lr_lo": "whole domain, 1 epoch, low LR",
          "subset_4ep": "(1) random 10% subset x 4 epochs", "hq_4ep": "(1)+(2) high-quality 10% x 4 epochs",
          "hq_mixture_4ep": "(1)+(2)+(3) web share -> domain_hq, rest resampled per epoch",
          "replay10": "whole domain + 10% pretraining replay", "no_rewarm": "constant LR = pretraining's final LR",
          "freeze_top": "high LR, top layers frozen", "freeze_bottom": "high LR, bottom layers frozen"}
# paper: OpenLlama-3B continually pretrained on 50B medical tokens (one epoch); the strategies use 20B.
PAPER = dict(
    model=dict(vocab_size=32000, hidden_size=3200, num_layers=26, num_heads=32, num_kv_heads=32, head_dim=100,
               mlp_dim=8640, rope_theta=10000.0, max_seq_len=2048, norm_eps=1e-6, tie_embeddings=False,
               dtype="bfloat16", remat_policy="full"),
    batch=1024, seq_len=2048, domain_tokens=50_000_000_000, lr=3e-5, freeze=5, evals=50)
PAPER_PATHS = {"model": "checkpoints/open_llama_3b", "tokenizer": "checkpoints/open_llama_3b/tokenizer.model",
               "domain": "data/medical/*.jsonl", "quality_reference": "data/medical_reference/*.jsonl",
               "web": "data/redpajama/common_crawl/*.jsonl", "general": "data/redpajama/other/*.jsonl",
               "validation_domain": "data/medical_val.jsonl", "validation_web": "data/redpajama_val/cc.jsonl",
               "validation_general": "data/redpajama_val/other.jsonl",
               "tasks": "data/tasks/mmlu_medical.jsonl,data/tasks/pubmedqa.jsonl,data/tasks/medmcqa.jsonl,"
                        "data/tasks/medqa.jsonl"}


def _run(scale: dict, prepared: str, overrides: dict, tasks: list) -> ml_collections.ConfigDict:
  config = base_config("tiny")
  config.model = presets.config_dict("tiny", **scale["model"])
  steps = overrides["train.steps"]
  every = max(1, steps // scale["evals"])
  common = {"data.prepared_dir": prepared, "data.eval_split": "validation", "train.batch_size": scale["batch"],
            "train.seq_len": scale["seq_len"], "train.progress_bar": False, "train.log_every": 1,
            "checkpoint.keep_last": 1, "eval.batches": 1, "eval.batch_size": scale["batch"],
            "eval.every_steps": every, "optimizer.b1": 0.9, "optimizer.b2": 0.95, "optimizer.weight_decay": 0.01,
            "optimizer.schedule": "cosine", "optimizer.warmup_ratio": 0.1, "optimizer.min_lr_ratio": 0.1}
  config = configlib.apply_overrides(config, {**common, **overrides})
  with config.unlocked():
    config.checkpoint.every_steps = steps
    config.eval.tasks = list(tasks)
    config.eval.tasks_options = ml_collections.ConfigDict({"add_bos": True, "batch_size": 64,
                                                           "bpb_max_bytes": 16384})
    config.eval.source_losses = ["domain"]
  return config


def _arm(scale: dict, arm: str, prepared: str, init_from: str, tasks: list, full_steps: int,
         strategy_steps: int) -> ml_collections.ConfigDict:
  hi, lo = scale["lrs"]
  k = scale["freeze"]
  base = {"train.init_from": init_from, "optimizer.lr": hi, "train.steps": full_steps,
          "eval.relative_update_k": k}
  changes = {
      "full_lr_hi": {}, "full_lr_lo": {"optimizer.lr": lo},
      "subset_4ep": {"train.steps": strategy_steps}, "hq_4ep": {"train.steps": strategy_steps},
      "hq_mixture_4ep": {"train.steps": strategy_steps, "data.replace_sources": WEB, "data.replace_by": "domain_hq"},
      "replay10": {"train.steps": int(round(full_steps / 0.9)), "data.replay.share": 0.1},
      "no_rewarm": {"optimizer.lr": scale["pretrain_lr"] * 0.1, "optimizer.schedule": "constant",
                    "optimizer.warmup_ratio": 0.0, "optimizer.warmup_steps": 0},
      "freeze_top": {"optimizer.freeze_layers": list(range(-k, 0))},
      "freeze_bottom": {"optimizer.freeze_layers": list(range(k))},
  }[arm]
  if scale.get("fixed_steps"):
    changes["train.steps"] = scale["fixed_steps"]
  config = _run(scale, prepared, {**base, **changes}, tasks)
  with config.unlocked():
    if arm == "hq_4ep":
      config.data.sources = {"domain_hq": 1.0}
    elif arm == "hq_mixture_4ep":
      config.data.sources = dict(PRETRAIN_MIX)
      for name in GENERAL:
        config.data.subsets[name] = {"fraction": 0.25, "resample_each_epoch": True, "seed": 0}
    else:
      config.data.sources = {"domain": 1.0}
    if arm == "subset_4ep":
      config.data.subsets.domain = {"fraction": 0.1, "seed": 0}
    if arm == "replay10":
      config.data.replay.sources = dict(PRETRAIN_MIX)
  return config


def _small_scale(name: str) -> ml_collections.ConfigDict:
  scale = SCALES[name]
  study = common.new_study("stability_gap", name, {"seeds": 1})  # not seeded yet (its redesign: issue 21/22)
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": "yijax.studies.stability_gap:prepare_data",
      "args": dict(seed=0, **scale["data"])})
  prepared = "{stage:data}/prepared"
  steps = scale["pretrain_steps"]
  pretrain = _run(scale, prepared, {"train.steps": steps, "optimizer.lr": scale["pretrain_lr"],
                                    "optimizer.warmup_ratio": 0.05, "optimizer.weight_decay": 0.1}, [])
  with pretrain.unlocked():
    pretrain.data.sources = dict(PRETRAIN_MIX)
    pretrain.eval.every_steps = 0
    pretrain.eval.source_losses = []
  study.stages.pretrain = ml_collections.ConfigDict({"kind": "train", "depends_on": ["data"], "run": pretrain})
  tasks = TASKS + list(scale["extra_tasks"])
  full = steps_for_epochs(scale["data"]["domain_tokens"], 1, scale["batch"], scale["seq_len"])
  strategy = steps_for_epochs(scale["data"]["domain_tokens"] * 0.1, 4, scale["batch"], scale["seq_len"])
  arms = scale["arms"] or ARMS
  for arm in arms:
    run = _arm(scale, arm, prepared, "{stage:pretrain}", tasks, full, strategy)
    study.stages[arm] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["pretrain"], "run": run})
  study.stages.base_eval = ml_collections.ConfigDict({
      "kind": "python", "depends_on": ["pretrain"], "fn": "yijax.studies.stability_gap:evaluate_base",
      "args": {"model": "{stage:pretrain}", "run": _arm(scale, arms[0], prepared, "{stage:pretrain}", tasks, full,
                                                         strategy)}})
  study.stages.report = ml_collections.ConfigDict({
      "kind": "python", "depends_on": ["base_eval", "data"] + list(arms),
      "fn": "yijax.studies.stability_gap:analyze",
      "args": {"arms": list(arms), "keys": KEYS, "labels": {a: LABELS[a] for a in arms},
               "domain_items": TASKS[0], "general_items": TASKS[1]}})
  return study


def _paper() -> ml_collections.ConfigDict:
  """OpenLlama-3B (converted with `yijax convert hf-to-yijax`), real data by path; meant for --dry_run here."""
  p = PAPER
  study = common.new_study("stability_gap", "paper", {"seeds": 1})
  study.paths = ml_collections.ConfigDict(dict(PAPER_PATHS))
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": "yijax.studies.stability_gap:prepare_paths",
      "args": {"paths": study.paths, "hq_tokens": 5_000_000_000}})
  scale = {"model": p["model"], "batch": p["batch"], "seq_len": p["seq_len"], "evals": p["evals"],
           "lrs": (p["lr"], p["lr"]), "freeze": p["freeze"], "pretrain_lr": 3e-4}
  tasks = PAPER_PATHS["tasks"].split(",")
  full = steps_for_epochs(p["domain_tokens"], 1, p["batch"], p["seq_len"])
  strategy = steps_for_epochs(p["domain_tokens"] * 0.1, 4, p["batch"], p["seq_len"])
  for arm in ("full_lr_hi", "subset_4ep", "hq_4ep", "hq_mixture_4ep"):
    run = _arm(scale, arm, "{stage:data}/prepared", PAPER_PATHS["model"], tasks, full, strategy)
    with run.unlocked():
      run.model = presets.config_dict("tiny", **p["model"])
      run.data.add_bos, run.data.add_eos = True, True
      run.eval.tasks_options = ml_collections.ConfigDict({"add_bos": True, "batch_size": 32})
      run.eval.source_losses = ["domain"]
      run.mesh.data, run.mesh.fsdp = 1, -1
      if arm == "hq_mixture_4ep":  # LLaMA's mixture: CommonCrawl + C4 (web, 82%) -> domain_hq
        run.data.sources = {"web": 0.82, "general": 0.18}
        run.data.replace_sources, run.data.replace_by = ["web"], "domain_hq"
        run.data.subsets = ml_collections.ConfigDict({"general": {"fraction": 0.25, "resample_each_epoch": True}})
    study.stages[arm] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["data"], "run": run})
  return study


def get_config(scale="smoke"):
  return common.by_scale(scale, **{name: _small_scale for name in SCALES}, paper=lambda _: _paper())(scale)
