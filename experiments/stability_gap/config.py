"""The stability gap of continual pretraining and three ways to close it (Guo et al. 2024, arXiv 2406.14833).

  yijax experiment --config=experiments/stability_gap/config.py:smoke --workdir=/tmp/stability_gap_smoke
  nice -n 5 yijax experiment --config=experiments/stability_gap/config.py:cpu --workdir=runs/stability_gap \\
      --results_dir=experiments/stability_gap/results/cpu
  yijax experiment --config=experiments/stability_gap/config.py:paper --workdir=runs/sg_paper --dry_run

Stages: data (synthetic worlds A/B + the embedded corpus, a tokenizer, the domain corpus of world-B
biographies in an archival register, quality-scored into `domain_hq`; QA task files;
yijax/studies/stability_gap.py) -> pretrain (a small Yi-architecture model: the embedded corpus as
"web" + world-A biographies and QA + a couple of narrative biographies of world B's known half) ->
start_eval (step 0 of every curve, and the gate: world-A trained QA well above chance, held-out world-A
QA and world-B known-half QA clearly above chance, or the study stops) -> the arms, each a continual-
pretraining run from the pretrained model with the QA tasks and the domain loss scored densely early ->
report (results.json, report.md, PNGs; claims over seeds).

Arms (rewarm + redecay: linear warmup from 0 over 10% of the steps to the peak, then cosine to 10%):
  baseline         the whole domain corpus, one epoch (in real tokens)                      seeded
  subset           (1) a random 40% of the domain documents, 2 epochs (0.8 of the baseline's
                   tokens)                                                                    seeded
  hq               (1)+(2) the 40% of domain tokens with the lowest n-gram perplexity, 2 ep  seeded
  hq_mixture       (1)+(2)+(3) the pretraining mixture with its web share taken by domain_hq,
                   whose documents are resampled (half of them) every epoch; same tokens      seeded
The paper's subset is 10% (5B of 50B tokens) for 4 epochs. Here perplexity selection of 10% kept a clean
record of only 51% of world B's people (30%: 82%, 40%: 92%; the n-gram perplexity of a record depends on
its person's attribute values), so the high-quality arm could not learn the people the questions ask
about; 40% x 2 epochs keeps 92% (the data stage checks it: min_hq_coverage).
  no_shift         continued pretraining on the pretraining mixture itself (the relative-
                   update control: no distribution shift), the baseline's tokens              seeded
  replay10         the whole domain + 10% replay of the pretraining mixture                   1 seed
  freeze_top / freeze_bottom   the baseline with the top / bottom `freeze` layers frozen (cpu: 1 of 6) 1 seed
"""

import ml_collections

from yijax import configlib
from yijax.data.mixture import steps_for_epochs
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config

PRETRAIN_MIX = {"python_code": 0.35, "python_docs": 0.10, "world_a_bios": 0.25, "world_a_qa": 0.15,
                "world_b_intro": 0.15}
WEB = ["python_code", "python_docs"]
QA = ["b_known_qa", "b_unknown_qa", "a_held_out_qa", "a_trained_qa"]
TASK_FILES = {name: f"{{stage:data}}/tasks/{name}.jsonl" for name in QA}
TASKS = [TASK_FILES[name] for name in QA[:3]]  # the arms' tasks; a_trained_qa only gates the start model
KEYS = {**{name: f"tasks/{name}/acc" for name in QA}, "domain_loss": "loss/domain",
        "update_ratio": "relative_update/bottom_over_top"}
SEEDED = ["baseline", "subset", "hq", "hq_mixture", "no_shift"]
CONTROLS = ["replay10", "freeze_top", "freeze_bottom"]
STRATEGIES = ["subset", "hq", "hq_mixture"]
LABELS = {"baseline": "whole domain, 1 epoch", "subset": "(1) random 40% x 2 epochs",
          "hq": "(1)+(2) high-quality 40% x 2 epochs",
          "hq_mixture": "(1)+(2)+(3) pretraining mixture, web share -> domain_hq resampled per epoch",
          "no_shift": "pretraining mixture continued (no shift)",
          "replay10": "whole domain + 10% pretraining replay",
          "freeze_top": "baseline, top {k} layer(s) frozen", "freeze_bottom": "baseline, bottom {k} layer(s) frozen"}

SCALES = {
    # seconds on 2 CPU cores: every stage, a micro model, a few steps; the gate is recorded, not enforced
    "smoke": dict(
        model=dict(num_layers=4, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
                   vocab_size=512, max_seq_len=64),
        data=dict(world_a=16, world_b=12, reference=12, a_bios_per_person=2, a_qa_per_person=1, b_intro_bios=2,
                  domain_tokens=4000, validation_per_person=1, min_hq_coverage=0.0, vocab_size=512,
                  embedded_max_docs=8, tokenizer_embedded_mb=0.05),
        knobs=dict(seeds=1, pretrain_steps=4, pretrain_lr=3e-3, lr=1e-3, packing=0.9, fixed_steps=4),
        batch=8, seq_len=64, eval_points=2, loss_batches=1, freeze=1, enforce_gate=False,
        arms=["baseline", "hq_mixture", "no_shift", "freeze_top"]),
    # the README's numbers: 6 layers x 128 on 2 cores
    "cpu": dict(
        model=dict(num_layers=6, hidden_size=128, num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=384,
                   vocab_size=1024, max_seq_len=128),
        data=dict(world_a=200, world_b=260, reference=80, a_bios_per_person=4, a_qa_per_person=2, b_intro_bios=2,
                  domain_tokens=1_000_000, validation_per_person=2, min_hq_coverage=0.9, vocab_size=1024,
                  embedded_max_docs=0, tokenizer_embedded_mb=1.0),
        knobs=dict(seeds=3, pretrain_steps=3000, pretrain_lr=3e-3, lr=1e-3, packing=0.85, fixed_steps=0),
        batch=16, seq_len=128, eval_points=16, loss_batches=8, freeze=1, enforce_gate=True, arms=None),
    # one H100 (not run): a 12-layer x 512 model, 10x the people, 10M domain tokens
    "gpu": dict(
        model=dict(num_layers=12, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64, mlp_dim=1408,
                   vocab_size=4096, max_seq_len=512, dtype="bfloat16"),
        data=dict(world_a=2000, world_b=2600, reference=400, a_bios_per_person=4, a_qa_per_person=2, b_intro_bios=2,
                  domain_tokens=10_000_000, validation_per_person=1, min_hq_coverage=0.9, vocab_size=4096,
                  embedded_max_docs=0, tokenizer_embedded_mb=2.0),
        knobs=dict(seeds=3, pretrain_steps=5000, pretrain_lr=1e-3, lr=3e-4, packing=0.85, fixed_steps=0),
        batch=32, seq_len=512, eval_points=20, loss_batches=8, freeze=3, enforce_gate=True, arms=None),
}
DATA_DEFAULTS = dict(seed=0, a_qa_fraction=0.75, b_known_fraction=0.5, corrupt_fraction=0.3, hq_fraction=0.4)
STRATEGY_EPOCHS = 2
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


def eval_steps(total: int, points: int) -> list[int]:
  """About `points` evaluation steps in 1..total, log-spaced (dense early, where the dip is), ending at total."""
  import numpy as np

  steps = np.unique(np.round(np.geomspace(1, total, max(points, 2))).astype(int))
  return [int(s) for s in steps if 1 <= s <= total]


def _run(scale: dict, prepared: str, overrides: dict, tasks: list) -> ml_collections.ConfigDict:
  config = base_config("tiny")
  config.model = presets.config_dict("tiny", **scale["model"])
  steps = overrides["train.steps"]
  common_fields = {
      "data.prepared_dir": prepared, "data.eval_split": "validation", "train.batch_size": scale["batch"],
      "train.seq_len": scale["seq_len"], "train.progress_bar": False, "train.log_every": 1,
      "checkpoint.keep_last": 1, "eval.batches": 1, "eval.batch_size": scale["batch"], "eval.every_steps": 0,
      "optimizer.b1": 0.9, "optimizer.b2": 0.95, "optimizer.weight_decay": 0.01, "optimizer.schedule": "cosine",
      "optimizer.warmup_ratio": 0.1, "optimizer.min_lr_ratio": 0.1}
  config = configlib.apply_overrides(config, {**common_fields, **overrides})
  with config.unlocked():
    config.checkpoint.every_steps = steps
    config.eval.steps = eval_steps(steps, scale["eval_points"])
    config.eval.tasks = list(tasks)
    config.eval.tasks_options = ml_collections.ConfigDict({"add_bos": True, "batch_size": 64})
    config.eval.source_losses = ["domain"]
    config.eval.source_loss_batches = scale.get("loss_batches", 0)
  return config


def _arm(scale: dict, arm: str, prepared: str, init_from: str, tasks: list, full_steps: int,
         strategy_steps: int) -> ml_collections.ConfigDict:
  k = scale["freeze"]
  base = {"train.init_from": init_from, "optimizer.lr": scale["lr"], "train.steps": full_steps,
          "eval.relative_update_k": k}
  changes = {
      "baseline": {}, "no_shift": {},
      "subset": {"train.steps": strategy_steps}, "hq": {"train.steps": strategy_steps},
      "hq_mixture": {"train.steps": strategy_steps, "data.replace_sources": WEB, "data.replace_by": "domain_hq"},
      "replay10": {"train.steps": int(round(full_steps / 0.9)), "data.replay.share": 0.1},
      "freeze_top": {"optimizer.freeze_layers": list(range(-k, 0))},
      "freeze_bottom": {"optimizer.freeze_layers": list(range(k))},
  }[arm]
  if scale.get("fixed_steps"):
    changes["train.steps"] = scale["fixed_steps"]
  config = _run(scale, prepared, {**base, **changes}, tasks)
  with config.unlocked():
    if arm == "hq":
      config.data.sources = {"domain_hq": 1.0}
    elif arm in ("hq_mixture", "no_shift"):
      config.data.sources = dict(PRETRAIN_MIX)
      if arm == "hq_mixture":  # (3): the domain share is a new draw from the high-quality subset every epoch
        config.data.subsets.domain_hq = {"fraction": 0.5, "resample_each_epoch": True, "seed": 0}
    else:
      config.data.sources = {"domain": 1.0}
    if arm == "subset":
      config.data.subsets.domain = {"fraction": scale["hq_fraction"], "seed": 0}
    if arm == "replay10":
      config.data.replay.sources = dict(PRETRAIN_MIX)
  return config


def _small_scale(name: str) -> ml_collections.ConfigDict:
  scale = dict(SCALES[name])
  knobs = scale["knobs"]
  study = common.new_study("stability_gap", name, dict(knobs))
  data_args = dict(DATA_DEFAULTS, **scale["data"], seq_len=scale["seq_len"], batch_size=scale["batch"])
  scale.update(lr=knobs["lr"], fixed_steps=knobs["fixed_steps"], hq_fraction=data_args["hq_fraction"])
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": "yijax.studies.stability_gap:prepare_data", "args": data_args})
  prepared = "{stage:data}/prepared"
  steps = knobs["pretrain_steps"]
  pretrain = _run(scale, prepared, {"train.steps": steps, "optimizer.lr": knobs["pretrain_lr"],
                                    "optimizer.warmup_ratio": 0.05, "optimizer.weight_decay": 0.1}, [])
  with pretrain.unlocked():
    pretrain.data.sources = dict(PRETRAIN_MIX)
    pretrain.eval.steps = []
    pretrain.eval.tasks = []
    pretrain.eval.source_losses = []
    pretrain.checkpoint.every_steps = max(1, steps // 6)  # a killed pretraining resumes
  common.link(pretrain, {"train.steps": study.study.get_ref("pretrain_steps"),
                         "optimizer.lr": study.study.get_ref("pretrain_lr")})
  study.stages.pretrain = ml_collections.ConfigDict({"kind": "train", "depends_on": ["data"], "run": pretrain})
  # steps for epochs of the domain in real tokens: packed rows are `packing` full (the data stage measures it)
  full = steps_for_epochs(data_args["domain_tokens"], 1, scale["batch"], scale["seq_len"], knobs["packing"])
  strategy = steps_for_epochs(data_args["domain_tokens"] * data_args["hq_fraction"], STRATEGY_EPOCHS,
                              scale["batch"], scale["seq_len"], knobs["packing"])
  arms = scale["arms"] or SEEDED + CONTROLS
  for arm in arms:
    run = _arm(scale, arm, prepared, "{stage:pretrain}", TASKS, full, strategy)
    study.stages[arm] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["start_eval"], "run": run,
                                                   "seeded": arm in SEEDED})
  items = dict(TASK_FILES)
  start_run = _arm(scale, arms[0], prepared, "{stage:pretrain}", list(TASK_FILES.values()), full, strategy)
  study.stages.start_eval = ml_collections.ConfigDict({
      "kind": "python", "depends_on": ["pretrain"], "fn": "yijax.studies.stability_gap:evaluate_start",
      "args": {"model": "{stage:pretrain}", "items": items, "min_trained": 0.5, "min_sigmas": 3.0,
               "enforce": scale["enforce_gate"], "run": start_run}})
  study.stages.report = ml_collections.ConfigDict({
      "kind": "python", "depends_on": ["start_eval", "data"] + list(arms),
      "fn": "yijax.studies.stability_gap:analyze",
      "args": {"arms": list(arms), "keys": KEYS, "labels": {a: LABELS[a].format(k=scale["freeze"]) for a in arms},
               "items": items,
               "baseline": "baseline", "strategies": [a for a in STRATEGIES if a in arms],
               "subset_fraction": data_args["hq_fraction"]}})
  return study


def _paper() -> ml_collections.ConfigDict:
  """OpenLlama-3B (converted with `yijax convert hf-to-yijax`), real data by path; meant for --dry_run here."""
  p = PAPER
  study = common.new_study("stability_gap", "paper", {"seeds": 1})
  study.paths = ml_collections.ConfigDict(dict(PAPER_PATHS))
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": "yijax.studies.stability_gap:prepare_paths",
      "args": {"paths": study.paths, "hq_tokens": 5_000_000_000}})
  scale = {"model": p["model"], "batch": p["batch"], "seq_len": p["seq_len"], "eval_points": p["evals"],
           "lr": p["lr"], "freeze": p["freeze"], "hq_fraction": 0.1}
  tasks = PAPER_PATHS["tasks"].split(",")
  full = steps_for_epochs(p["domain_tokens"], 1, p["batch"], p["seq_len"])
  strategy = steps_for_epochs(p["domain_tokens"] * 0.1, 4, p["batch"], p["seq_len"])
  for arm in ("baseline", "subset", "hq", "hq_mixture"):
    run = _arm(scale, arm, "{stage:data}/prepared", PAPER_PATHS["model"], tasks, full, strategy)
    with run.unlocked():
      run.model = presets.config_dict("tiny", **p["model"])
      run.data.add_bos, run.data.add_eos = True, True
      run.eval.tasks_options = ml_collections.ConfigDict({"add_bos": True, "batch_size": 32})
      run.eval.source_losses = ["domain"]
      run.mesh.data, run.mesh.fsdp = 1, -1
      if arm == "hq_mixture":  # LLaMA's mixture: CommonCrawl + C4 (web, 82%) -> domain_hq, resampled per epoch
        run.data.sources = {"web": 0.82, "general": 0.18}
        run.data.replace_sources, run.data.replace_by = ["web"], "domain_hq"
        run.data.subsets = ml_collections.ConfigDict(
            {"domain_hq": {"fraction": 0.5, "resample_each_epoch": True, "seed": 0}})
    study.stages[arm] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["data"], "run": run})
  return study


def get_config(scale="smoke"):
  return common.by_scale(scale, **{name: _small_scale for name in SCALES}, paper=lambda _: _paper())(scale)
