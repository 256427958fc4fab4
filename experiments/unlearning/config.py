"""Machine unlearning of a pretrained model (Yao et al., ACL 2024, arXiv 2402.15159).

  yijax experiment --config=experiments/unlearning/config.py:smoke --workdir=/tmp/unlearning_smoke
  nice -n 5 yijax experiment --config=experiments/unlearning/config.py:cpu --workdir=/tmp/unlearning_cpu
  yijax experiment --config=experiments/unlearning/config.py:paper --workdir=runs/unlearning_paper --dry_run

Stages (smoke / cpu / gpu): data (the embedded corpus dealt into forget /
approximate / retain / general sets, yijax/unlearning/splits.py) -> pretrain
(a tiny Yi-architecture model, several epochs over the seen code + prose) and
retrain (the gold baseline: the same from scratch without the forget set) ->
one run per method x learning rate x epochs, each starting from the
pretrained model -> evaluate (perplexity, accuracy, Min-K% MIA of every model)
-> report (results.json, report.md, forget_vs_general.png).
paper: Yi-6B converted with `yijax convert hf-to-yijax`, the llmunlearn/unlearn_dataset
GitHub sets as JSONL (paths below, overridable: --config.paths.model=DIR ...), the
reference hyperparameters; no pretrain / retrain stage (retraining Yi-6B is what
the paper could not afford).
"""

import ml_collections

from yijax import configlib
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config
from yijax.unlearning import methods

EVERY_METHOD = list(methods.METHODS)
EMBEDDED_KEYS = ("forget", "approximate", "retain", "retain_eval", "other_code", "general_eval", "general_retain",
                 "other_prose")

SCALES = {
    # seconds on 2 CPU cores: every stage, a micro model, three methods
    "smoke": dict(
        model=dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
                   vocab_size=512, max_seq_len=64),
        vocab_size=512, chunk_len=64, budgets=(5000, 3000, 3000, 2000, 2000, 2000, 2000, 2000),
        pretrain_steps=24, pretrain_batch=8, pretrain_lr=3e-3, num_chunks=8, sequences_per_step=8,
        eval_chunks=8, methods=["ga", "ga_gd_in", "ga_kl_general"], lrs=[1e-3], epochs=[2]),
    # the README table: a 1.3M-parameter Yi-architecture model (the tiny preset, narrower), 2 CPU cores
    "cpu": dict(
        model=dict(vocab_size=2048, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                   mlp_dim=384, max_seq_len=256),
        vocab_size=2048, chunk_len=256, budgets=(60000, 60000, 60000, 60000, 160000, 40000, 60000, 60000),
        pretrain_steps=320, pretrain_batch=16, pretrain_lr=3e-3, num_chunks=64, sequences_per_step=16,
        eval_chunks=64, methods=EVERY_METHOD, lrs=[1e-4, 3e-4, 1e-3], epochs=[1, 3]),
    # one H100, under 25 minutes (not measured): a 4x wider model, 4x the data
    "gpu": dict(
        model=dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2, head_dim=64, mlp_dim=1408,
                   vocab_size=8192, max_seq_len=512, dtype="bfloat16"),
        vocab_size=8192, chunk_len=512,
        budgets=(240000, 240000, 240000, 240000, 1200000, 60000, 120000, 150000),
        pretrain_steps=2000, pretrain_batch=32, pretrain_lr=2e-3, num_chunks=128, sequences_per_step=32,
        eval_chunks=128, methods=EVERY_METHOD, lrs=[3e-5, 1e-4, 3e-4], epochs=[1, 3]),
}

# paper: GitHub forget set, 4096-token chunks, 680 sequences per step, AdamW 2e-5, HF cosine with 3% warmup,
# weight decay 0, one epoch; Yi-6B was pretrained on 3.1T tokens
PAPER = dict(chunk_len=4096, num_chunks=2720, sequences_per_step=680, eval_chunks=680, lrs=[2e-5], epochs=[1],
             methods=EVERY_METHOD, pretrain_tokens=3.1e12, microbatches=85)
PAPER_PATHS = {"model": "checkpoints/yi-6b", "tokenizer": "checkpoints/yi-6b/tokenizer.model",
               "forget": "data/unlearn_dataset/github/forget.jsonl",
               "approximate": "data/unlearn_dataset/github/approximate.jsonl",
               "retain": "data/unlearn_dataset/github/retain.jsonl",
               "general_retain": "data/unlearn_dataset/general/retain.jsonl",
               "general_eval": "data/unlearn_dataset/general/evaluation.jsonl"}


def _model(scale: dict) -> ml_collections.ConfigDict:
  return presets.config_dict("tiny", **scale["model"])


def _run(model, prepared: str, overrides: dict) -> ml_collections.ConfigDict:
  config = base_config("tiny")
  config.model = model
  common = {"data.prepared_dir": prepared, "data.split": "train", "eval.batches": 0,
            "train.progress_bar": False, "checkpoint.keep_last": 1, "train.log_every": 1}
  config = configlib.apply_overrides(config, {**common, **overrides})
  with config.unlocked():
    config.checkpoint.every_steps = config.train.steps  # the final model only
  return config


def _pretrain(scale: dict, source: str) -> ml_collections.ConfigDict:
  steps = scale["pretrain_steps"]
  return _run(_model(scale), "{stage:data}/prepared", {
      "data.sources": {source: 1.0}, "train.steps": steps, "train.batch_size": scale["pretrain_batch"],
      "train.seq_len": scale["chunk_len"], "optimizer.lr": scale["pretrain_lr"],
      "optimizer.warmup_steps": max(steps // 20, 1), "optimizer.schedule": "cosine"})


def _unlearn(model, prepared: str, method: str, original, lr: float, epochs: int, scale: dict,
             extra: dict | None = None) -> ml_collections.ConfigDict:
  """One unlearning run: Yao et al.'s optimizer (AdamW, HF cosine with 3% warmup, no weight decay)."""
  paired = bool(methods.get(method).retain)
  forget_rows = scale["sequences_per_step"] // (2 if paired else 1)
  overrides = methods.run_overrides(method, original, lr, epochs, scale["num_chunks"], forget_rows)
  overrides["train.batch_size"] = scale["sequences_per_step"]
  overrides.update({"train.seq_len": scale["chunk_len"], "optimizer.schedule": "hf_cosine",
                    "optimizer.warmup_ratio": 0.03, "optimizer.weight_decay": 0.0, "optimizer.b2": 0.999,
                    "optimizer.clip_norm": 1.0, **(extra or {})})
  return _run(model, prepared, overrides)


def _arm_name(method: str, lr_index: int, epochs: int) -> str:
  return f"{method}_lr{lr_index}_ep{epochs}"


def _arms(scale: dict, model, prepared: str, original, extra: dict | None = None):
  stages, specs = {}, []
  for method in scale["methods"]:
    for i, lr in enumerate(scale["lrs"]):
      for epochs in scale["epochs"]:
        name = _arm_name(method, i, epochs)
        run = _unlearn(model, prepared, method, original, lr, epochs, scale, extra)
        stages[name] = run
        specs.append({"name": name, "method": method, "lr": lr, "epochs": epochs, "steps": run.train.steps,
                      "batch_size": run.train.batch_size, "seq_len": run.train.seq_len})
  return stages, specs


def _eval_sets(scale: dict, retain_set: str) -> dict:
  n = scale["eval_chunks"]
  return {"forget": ["forget", scale["num_chunks"]], "approximate": ["approximate", n],
          retain_set: [retain_set, n], "general_eval": ["general_eval", n]}


def _tail(study, models: dict, specs: list, sets: dict, scale: dict, add_bos: bool, baselines: dict) -> None:
  """The evaluate and report stages."""
  chunk_len = scale["chunk_len"]
  study.stages.evaluate = ml_collections.ConfigDict({
      "kind": "python", "depends_on": sorted(n for n in study.stages if n != "data") + ["data"],
      "fn": "yijax.unlearning.study:evaluate",
      "args": {"models": models, "prepared": "{stage:data}/prepared", "sets": sets, "chunk_len": chunk_len,
               "add_bos": add_bos, "add_eos": add_bos, "ks": [30, 40, 50, 60, 100], "batch_size": 8}})
  study.stages.report = ml_collections.ConfigDict({
      "kind": "python", "depends_on": ["evaluate"], "fn": "yijax.unlearning.study:analyze",
      "args": {"evaluate_stage": "evaluate", "arms": specs, "sets": list(sets), "general_set": "general_eval",
               "table_k": "30", "tolerance": 0.1, **baselines}})


def _small_scale(name: str) -> ml_collections.ConfigDict:
  scale = SCALES[name]
  study = common.new_study("unlearning", name, {"seeds": 1})  # not seeded yet (its redesign: issue 21/22)
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": "yijax.unlearning.study:prepare_data",
      "args": {"kind": "embedded", "budgets": dict(zip(EMBEDDED_KEYS, scale["budgets"])),
               "code_doc_bytes": [1000, 8000], "prose_doc_bytes": [500, 40000], "tokenizer": "",
               "vocab_size": scale["vocab_size"], "chunk_len": scale["chunk_len"], "add_bos": True,
               "add_eos": True, "required_chunks": {"forget": scale["num_chunks"],
                                                    "approximate": scale["eval_chunks"]}}})
  for stage, source in (("pretrain", "pretrain"), ("retrain", "retrain")):
    study.stages[stage] = ml_collections.ConfigDict(
        {"kind": "train", "depends_on": ["data"], "run": _pretrain(scale, source)})
  stages, specs = _arms(scale, _model(scale), "{stage:data}/prepared", "{stage:pretrain}")
  for name, run in stages.items():
    study.stages[name] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["pretrain"], "run": run})
  models = {"original": "{stage:pretrain}", "retrain": "{stage:retrain}", **{s["name"]: f"{{stage:{s['name']}}}"
                                                                            for s in specs}}
  pretrain = {"steps": scale["pretrain_steps"], "batch_size": scale["pretrain_batch"], "seq_len": scale["chunk_len"]}
  _tail(study, models, specs, _eval_sets(scale, "retain_eval"), scale, True,
        {"original": "original", "retrain": "retrain", "pretrain": pretrain, "retrain_run": pretrain})
  return study


def _paper() -> ml_collections.ConfigDict:
  scale = PAPER
  study = common.new_study("unlearning", "paper", {"seeds": 1})
  study.paths = ml_collections.ConfigDict({k: ml_collections.FieldReference(v) for k, v in PAPER_PATHS.items()})
  sets = {k: study.paths.get_ref(k) for k in ("forget", "approximate", "retain", "general_retain", "general_eval")}
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": "yijax.unlearning.study:prepare_data",
      "args": {"kind": "paths", "paths": sets, "tokenizer": study.paths.get_ref("tokenizer"),
               "chunk_len": scale["chunk_len"], "add_bos": False, "add_eos": False,
               "required_chunks": {"forget": scale["num_chunks"]}}})
  model = presets.config_dict("yi_6b", dtype="bfloat16", remat_policy="full")
  extra = {"train.microbatches": scale["microbatches"], "mesh.data": 1, "mesh.fsdp": -1,
           "data.add_bos": False, "data.add_eos": False}
  stages, specs = _arms(scale, model, "{stage:data}/prepared", study.paths.get_ref("model"), extra)
  for name, run in stages.items():
    study.stages[name] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["data"], "run": run})
  models = {"original": study.paths.get_ref("model"), **{s["name"]: f"{{stage:{s['name']}}}" for s in specs}}
  pretrain = {"tokens": scale["pretrain_tokens"], "seq_len": scale["chunk_len"]}
  _tail(study, models, specs, _eval_sets(scale, "retain"), scale, False,
        {"original": "original", "retrain": "", "pretrain": pretrain})
  return study


def get_config(scale="smoke"):
  return common.by_scale(scale, **{name: _small_scale for name in SCALES}, paper=lambda _: _paper())(scale)
