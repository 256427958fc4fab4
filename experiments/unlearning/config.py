"""Machine unlearning of a pretrained model (Yao et al., ACL 2024, arXiv 2402.15159), judged against gold models.

  yijax experiment --config=experiments/unlearning/config.py:smoke --workdir=/tmp/unlearning_smoke
  nice -n 5 yijax experiment --config=experiments/unlearning/config.py:cpu --workdir=runs/unlearning \\
      --results_dir=experiments/unlearning/results/cpu
  yijax experiment --config=experiments/unlearning/config.py:paper --workdir=runs/unlearning_paper --dry_run

Two settings, each with its original and gold models on `study.seeds` paired seeds (smoke / cpu / gpu):

  code    the paper's GitHub setting in miniature: code_data (the embedded corpus dealt into forget /
          approximate / retain / general sets, yijax/unlearning/splits.py) -> code_original (a small
          Yi-architecture model pretrained on code + prose, the forget modules a few percent of the tokens)
          and code_gold (the same from scratch without the forget modules), seeded
  entity  people: ent_data (synthetic people and prose, yijax/unlearning/entities.py) -> ent_pretrain (prose,
          world-A biographies and QA: the format) -> ent_original (knowledge injection: biographies of the
          forget and retain people) and ent_gold (the injection without the forget people), seeded

then, from seed 0 of the original model, one run per method x learning rate over every forget chunk for
`epochs` epochs with a checkpoint after each (the path), <setting>_evaluate (every model and checkpoint:
losses, bits per byte, QA accuracy, Min-K% membership inference) and report (results.json, report.md,
paths_<setting>.png: success = within the gold model's seed band on every metric, yijax/unlearning/report.py).
paper: Yi-6B converted with `yijax convert hf-to-yijax`, the llmunlearn/unlearn_dataset GitHub sets as JSONL
(paths below, overridable: --config.paths.model=DIR ...), the reference hyperparameters, every forget chunk;
no gold model (retraining Yi-6B is what the paper could not afford), so no band: the metrics only.
"""

import ml_collections

from yijax import configlib
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config
from yijax.unlearning import entities, methods

EVERY_METHOD = list(methods.METHODS)
EMBEDDED_KEYS = ("forget", "approximate", "retain", "retain_eval", "other_code", "general_eval", "general_retain",
                 "other_prose")
KS = [30, 40, 50, 60, 100]
TABLE_K = "30"
PRETRAIN_MIX = {"prose": 0.4, "world_a_bios": 0.35, "world_a_qa": 0.25}

SCALES = {
    # seconds on 2 CPU cores: every stage of both settings, a micro model, two seeds, three methods
    "smoke": dict(
        knobs=dict(seeds=2),
        model=dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
                   vocab_size=512, max_seq_len=64),
        vocab_size=512, chunk_len=64, budgets=(3000, 3000, 3000, 2000, 6000, 2000, 2000, 2000),
        pretrain_steps=12, pretrain_batch=8, pretrain_lr=3e-3, sequences_per_step=8, eval_chunks=8,
        methods=["ga", "ga_gd_in", "ga_kl_general"], lrs=[1e-3], epochs=2,
        entity=dict(people=dict(world_a=12, forget=4, retain=12, approximate=4, bios_per_person=2,
                                a_bios_per_person=2, a_qa_per_person=1, retain_eval_people=4),
                    prose_budgets=dict(general_retain=3000, general_eval=2000, other_prose=2000),
                    pretrain_steps=8, inject_steps=6, batch=8, seq_len=64, pretrain_lr=3e-3, inject_lr=1e-3,
                    eval_chunks=8)),
    # the README's results: two settings on 2 CPU cores (about an hour with 2 seeds)
    "cpu": dict(
        knobs=dict(seeds=2),
        model=dict(vocab_size=2048, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                   mlp_dim=384, max_seq_len=256),
        vocab_size=2048, chunk_len=256, budgets=(40000, 40000, 60000, 64000, 220000, 40000, 120000, 120000),
        pretrain_steps=320, pretrain_batch=16, pretrain_lr=3e-3, sequences_per_step=16, eval_chunks=64,
        methods=EVERY_METHOD, lrs=[1e-4, 3e-4, 1e-3, 3e-3], epochs=3,
        entity=dict(people=dict(world_a=200, forget=32, retain=160, approximate=32, bios_per_person=4,
                                a_bios_per_person=4, a_qa_per_person=2, retain_eval_people=64),
                    prose_budgets=dict(general_retain=60000, general_eval=40000, other_prose=140000),
                    pretrain_steps=1200, inject_steps=300, batch=16, seq_len=128, pretrain_lr=3e-3, inject_lr=1e-3,
                    eval_chunks=256)),
    # one H100 (not run): a 4x wider model, 4x the data
    "gpu": dict(
        knobs=dict(seeds=3),
        model=dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2, head_dim=64, mlp_dim=1408,
                   vocab_size=8192, max_seq_len=512, dtype="bfloat16"),
        vocab_size=8192, chunk_len=512,
        budgets=(60000, 60000, 240000, 160000, 1200000, 60000, 300000, 600000),
        pretrain_steps=2000, pretrain_batch=32, pretrain_lr=2e-3, sequences_per_step=32, eval_chunks=128,
        methods=EVERY_METHOD, lrs=[3e-5, 1e-4, 3e-4, 1e-3], epochs=3,
        entity=dict(people=dict(world_a=2000, forget=64, retain=1600, approximate=64, bios_per_person=4,
                                a_bios_per_person=4, a_qa_per_person=2, retain_eval_people=128),
                    prose_budgets=dict(general_retain=200000, general_eval=60000, other_prose=600000),
                    pretrain_steps=4000, inject_steps=1500, batch=32, seq_len=256, pretrain_lr=1e-3,
                    inject_lr=5e-4, eval_chunks=512)),
}

# paper: GitHub forget set, 4096-token chunks, 680 sequences per step, AdamW 2e-5, HF cosine with 3% warmup,
# weight decay 0, one epoch over every forget chunk; Yi-6B was pretrained on 3.1T tokens
PAPER = dict(chunk_len=4096, sequences_per_step=680, lrs=[2e-5], epochs=1, methods=EVERY_METHOD,
             pretrain_tokens=3.1e12, microbatches=85)
PAPER_PATHS = {"model": "checkpoints/yi-6b", "tokenizer": "checkpoints/yi-6b/tokenizer.model",
               "forget": "data/unlearn_dataset/github/forget.jsonl",
               "approximate": "data/unlearn_dataset/github/approximate.jsonl",
               "retain": "data/unlearn_dataset/github/retain.jsonl",
               "general_retain": "data/unlearn_dataset/general/retain.jsonl",
               "general_eval": "data/unlearn_dataset/general/evaluation.jsonl"}


def _run(model, prepared: str, overrides: dict) -> ml_collections.ConfigDict:
  config = base_config("tiny")
  config.model = model
  shared = {"data.prepared_dir": prepared, "data.split": "train", "eval.batches": 0,
            "train.progress_bar": False, "checkpoint.keep_last": 1, "train.log_every": 1}
  config = configlib.apply_overrides(config, {**shared, **overrides})
  with config.unlocked():
    config.checkpoint.every_steps = max(1, config.train.steps // 4)  # a killed run resumes; the last is kept
  return config


def _train(model, prepared: str, sources: dict, steps: int, batch: int, seq_len: int, lr: float,
           init_from: str = "") -> ml_collections.ConfigDict:
  run = _run(model, prepared, {
      "train.steps": steps, "train.batch_size": batch, "train.seq_len": seq_len, "optimizer.lr": lr,
      "optimizer.warmup_steps": max(steps // 20, 1), "optimizer.schedule": "cosine", "train.init_from": init_from})
  with run.unlocked():
    run.data.sources = dict(sources)
  return run


def _unlearn(model, prepared: str, method: str, original, lr: float, epochs: int, rows: int, chunk_len: int,
             extra: dict | None = None) -> ml_collections.ConfigDict:
  """One unlearning run over every forget chunk for `epochs` epochs, a kept checkpoint after each: Yao et al.'s
  optimizer (AdamW, HF cosine with 3% warmup, no weight decay)."""
  forget_rows = rows // (2 if methods.get(method).retain else 1)
  overrides = methods.run_overrides(method, original, lr, epochs, 0, forget_rows)
  overrides.update({"train.batch_size": rows, "train.seq_len": chunk_len, "data.chunked.save_every_epoch": True,
                    "optimizer.schedule": "hf_cosine",
                    "optimizer.warmup_ratio": 0.03, "optimizer.weight_decay": 0.0, "optimizer.b2": 0.999,
                    "optimizer.clip_norm": 1.0, **(extra or {})})
  config = base_config("tiny")
  config.model = model
  shared = {"data.prepared_dir": prepared, "data.split": "train", "eval.batches": 0,
            "train.progress_bar": False, "checkpoint.keep_last": 1, "train.log_every": 1}
  return configlib.apply_overrides(config, {**shared, **overrides})


def _arms(study, prefix: str, scale: dict, model, prepared: str, original: str, depends_on: str, rows: int,
          chunk_len: int, extra: dict | None = None) -> list[dict]:
  specs = []
  for method in scale["methods"]:
    for i, lr in enumerate(scale["lrs"]):
      name = f"{prefix}{method}_lr{i}"
      run = _unlearn(model, prepared, method, original, lr, scale["epochs"], rows, chunk_len, extra)
      study.stages[name] = ml_collections.ConfigDict({"kind": "train", "depends_on": [depends_on], "run": run})
      specs.append({"name": name, "method": method, "lr": lr, "epochs": scale["epochs"]})
  return specs


def _evaluate(study, name: str, data: str, sets: dict, chunk_len: int, add_bos: bool, seeded: list[str],
              models: dict, arms: list[dict], extra: dict | None = None) -> None:
  deps = [data] + seeded + [a["name"] for a in arms]
  study.stages[name] = ml_collections.ConfigDict({
      "kind": "python", "depends_on": deps, "fn": "yijax.unlearning.study:evaluate",
      "args": {"models": models, "seeded": seeded, "runs": {a["name"]: f"{{stage:{a['name']}}}" for a in arms},
               "prepared": f"{{stage:{data}}}/prepared", "sets": sets, "chunk_len": chunk_len,
               "add_bos": add_bos, "add_eos": add_bos, "ks": KS, "batch_size": 8, **(extra or {})}})


def _code_metrics(retain_set: str) -> list[dict]:
  return [{"key": "forget_loss", "label": "forget loss", "kind": "loss", "set": "forget", "higher_when_known": False},
          {"key": "approximate_loss", "label": "approximate loss", "kind": "loss", "set": "approximate"},
          {"key": "retain_loss", "label": f"{retain_set} loss", "kind": "loss", "set": retain_set},
          {"key": "general_bpb", "label": "general bits/byte", "kind": "bpb", "set": "general_eval"},
          {"key": "mia_auc", "label": f"MIA AUC (K={TABLE_K}%)", "kind": "mia", "k": TABLE_K}]


ENTITY_METRICS = [
    {"key": "forget_qa", "label": "forget QA acc", "kind": "task", "task": "forget_qa"},
    {"key": "retain_qa", "label": "retain QA acc", "kind": "task", "task": "retain_qa"},
    {"key": "approximate_qa", "label": "approximate QA acc", "kind": "task", "task": "approximate_qa"},
    {"key": "forget_loss", "label": "forget loss", "kind": "loss", "set": "forget", "higher_when_known": False},
    {"key": "general_bpb", "label": "general bits/byte", "kind": "bpb", "set": "general_eval"},
    {"key": "mia_auc", "label": f"MIA AUC (K={TABLE_K}%)", "kind": "mia", "k": TABLE_K}]


def _model(scale: dict) -> ml_collections.ConfigDict:
  return presets.config_dict("tiny", **scale["model"])


def _code_setting(study, scale: dict) -> dict:
  model, chunk_len = _model(scale), scale["chunk_len"]
  study.stages.code_data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": "yijax.unlearning.study:prepare_data",
      "args": {"kind": "embedded", "budgets": dict(zip(EMBEDDED_KEYS, scale["budgets"])),
               "code_doc_bytes": [1000, 8000], "prose_doc_bytes": [500, 40000], "tokenizer": "",
               "vocab_size": scale["vocab_size"], "chunk_len": chunk_len, "add_bos": True, "add_eos": True,
               "required_chunks": {"retain_eval": scale["eval_chunks"]}}})
  prepared = "{stage:code_data}/prepared"
  for stage, source in (("code_original", "pretrain"), ("code_gold", "retrain")):
    run = _train(model, prepared, {source: 1.0}, scale["pretrain_steps"], scale["pretrain_batch"], chunk_len,
                 scale["pretrain_lr"])
    study.stages[stage] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["code_data"], "run": run,
                                                     "seeded": True})
  arms = _arms(study, "code_", scale, model, prepared, "{stage:code_original/seed0}", "code_original",
               scale["sequences_per_step"], chunk_len)
  sets = {"forget": ["forget", 0], "approximate": ["approximate", 0],
          "retain_eval": ["retain_eval", scale["eval_chunks"]], "general_eval": ["general_eval", 0]}
  _evaluate(study, "code_evaluate", "code_data", sets, chunk_len, True, ["code_original", "code_gold"], {}, arms,
            {"bpb": ["general_eval"]})
  return {"evaluate_stage": "code_evaluate", "original": "code_original", "gold": "code_gold",
          "metrics": _code_metrics("retain_eval"), "forget_metric": "forget_loss", "utility_metric": "retain_loss",
          "arms": arms, "matched": ["forget_loss", "approximate_loss"], "matched_expect": "a < b"}


def _entity_setting(study, scale: dict) -> dict:
  ent = scale["entity"]
  model = presets.config_dict("tiny", **dict(scale["model"], max_seq_len=ent["seq_len"]))
  chunk_len = ent["seq_len"]
  people = ent["people"]
  study.stages.ent_data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": "yijax.unlearning.study:prepare_data",
      "args": {"kind": "entities", "seed": 0, **people, "prose_budgets": ent["prose_budgets"],
               "prose_doc_bytes": [500, 40000], "tokenizer": "", "vocab_size": scale["vocab_size"],
               "chunk_len": chunk_len, "add_bos": True, "add_eos": True,
               "required_chunks": {"retain": ent["eval_chunks"]}}})
  prepared = "{stage:ent_data}/prepared"
  pretrain = _train(model, prepared, PRETRAIN_MIX, ent["pretrain_steps"], ent["batch"], chunk_len,
                    ent["pretrain_lr"])
  study.stages.ent_pretrain = ml_collections.ConfigDict({"kind": "train", "depends_on": ["ent_data"],
                                                         "run": pretrain, "seeded": True})
  for stage, gold in (("ent_original", False), ("ent_gold", True)):
    sources, factor = entities.injection_sources(people["forget"], people["retain"], 0.6, 0.2, gold)
    run = _train(model, prepared, sources, max(1, round(ent["inject_steps"] * factor)), ent["batch"], chunk_len,
                 ent["inject_lr"], init_from="{stage:ent_pretrain}")
    study.stages[stage] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["ent_pretrain"], "run": run,
                                                     "seeded": True})
  arms = _arms(study, "ent_", scale, model, prepared, "{stage:ent_original/seed0}", "ent_original",
               scale["sequences_per_step"], chunk_len)
  sets = {"forget": ["forget", 0], "approximate": ["approximate", 0], "retain": ["retain", ent["eval_chunks"]],
          "general_eval": ["general_eval", 0]}
  tasks = {name: f"{{stage:ent_data}}/tasks/{name}.jsonl" for name in entities.TASKS}
  _evaluate(study, "ent_evaluate", "ent_data", sets, chunk_len, True, ["ent_original", "ent_gold"], {}, arms,
            {"bpb": ["general_eval"], "tasks": tasks, "tokenizer": "{stage:ent_data}/tokenizer/tokenizer.model"})
  return {"evaluate_stage": "ent_evaluate", "original": "ent_original", "gold": "ent_gold",
          "metrics": ENTITY_METRICS, "forget_metric": "forget_qa", "utility_metric": "retain_qa", "arms": arms,
          "matched": ["forget_qa", "approximate_qa"], "matched_expect": "a > b"}


def _small_scale(name: str) -> ml_collections.ConfigDict:
  scale = SCALES[name]
  study = common.new_study("unlearning", name, dict(scale["knobs"]))
  settings = {"code": _code_setting(study, scale), "entity": _entity_setting(study, scale)}
  study.stages.report = ml_collections.ConfigDict({
      "kind": "python", "depends_on": ["code_evaluate", "ent_evaluate"], "fn": "yijax.unlearning.study:analyze",
      "args": {"settings": settings}})
  return study


def _paper_pretrain_flops() -> float:
  """Training FLOPs of Yi-6B's pretraining (3.1T tokens at 4,096): what retraining without the forget set costs."""
  from yijax.train import flops

  return float(PAPER["pretrain_tokens"] * flops.train_flops_per_token(presets.get("yi_6b"), PAPER["chunk_len"]))


def _paper() -> ml_collections.ConfigDict:
  scale = PAPER
  study = common.new_study("unlearning", "paper", {"seeds": 1})
  study.paths = ml_collections.ConfigDict({k: ml_collections.FieldReference(v) for k, v in PAPER_PATHS.items()})
  sets = {k: study.paths.get_ref(k) for k in ("forget", "approximate", "retain", "general_retain", "general_eval")}
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": "yijax.unlearning.study:prepare_data",
      "args": {"kind": "paths", "paths": sets, "tokenizer": study.paths.get_ref("tokenizer"),
               "chunk_len": scale["chunk_len"], "add_bos": False, "add_eos": False}})
  model = presets.config_dict("yi_6b", dtype="bfloat16", remat_policy="full")
  extra = {"train.microbatches": scale["microbatches"], "mesh.data": 1, "mesh.fsdp": -1,
           "data.add_bos": False, "data.add_eos": False}
  arms = _arms(study, "", scale, model, "{stage:data}/prepared", study.paths.get_ref("model"), "data",
               scale["sequences_per_step"], scale["chunk_len"], extra)
  # membership inference on every forget chunk against as many approximate chunks (the evaluate stage pairs
  # the first min(forget, approximate) of each)
  eval_sets = {"forget": ["forget", 0], "approximate": ["approximate", 0], "retain": ["retain", 680],
               "general_eval": ["general_eval", 680]}
  _evaluate(study, "evaluate", "data", eval_sets, scale["chunk_len"], False, [],
            {"original_seed0": study.paths.get_ref("model")}, arms)
  metrics = [m for m in _code_metrics("retain") if m["kind"] != "bpb"]
  study.stages.report = ml_collections.ConfigDict({
      "kind": "python", "depends_on": ["evaluate"], "fn": "yijax.unlearning.study:analyze",
      "args": {"settings": {"code": {"evaluate_stage": "evaluate", "original": "original", "gold": "",
                                     "metrics": metrics, "forget_metric": "forget_loss",
                                     "utility_metric": "retain_loss", "arms": arms,
                                     "retrain_flops": _paper_pretrain_flops()}}}})
  return study


def get_config(scale="smoke"):
  return common.by_scale(scale, **{name: _small_scale for name in SCALES}, paper=lambda _: _paper())(scale)
