"""Context extension by continual pretraining (Yi-200K; Fu et al. 2024, "Data Engineering for Scaling
Language Models to 128K Context"): raise the RoPE base (ABF), train a little at the target length on
length-upsampled data at a constant LR, and read the needle-in-a-haystack heatmap before and after.

  yijax experiment --config=experiments/long_context/config.py:smoke --workdir=/tmp/long_context_smoke
  nice -n 5 yijax experiment --config=experiments/long_context/config.py:cpu --workdir=runs/long_context_cpu
  yijax experiment --config=experiments/long_context/config.py:paper --workdir=runs/yi_128k --dry_run

Stages (small scales): data (a tokenizer; `passkey` documents: filler sentences with "The pass key is K.
Remember it." at a random depth, the question and K, most documents short and some up to the target
length; the embedded corpus; yijax/studies/long_context.py) -> pretrain (from scratch at the short
length) -> needle_before (the pretrained model on the grid up to the target length) -> extend
(continual pretraining at the target length from the pretrained model: rope_theta raised, per-source
length upsampling, constant LR) and extend_no_abf (the same without the base change; not at smoke) ->
needle_after, needle_after_no_abf -> report (results.json, report.md, the heatmaps as PNGs).
paper: Yi-6B (converted, by path) 4K -> 128K: rope_theta 5e6 -> 1e7, 5B tokens of the per-source
length-upsampled mixture in batches of 32 x 131072 = 4.2M tokens at a constant 2e-5, then the needle
grid of Fu et al. (1K-128K, 40 lengths x 10 depths) on a haystack file.
"""

import ml_collections

from yijax import configlib
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config

STUDY = "yijax.studies.long_context"
MIXTURE = {"passkey": 0.6, "python_code": 0.25, "python_docs": 0.15}

SCALES = {
    # seconds on 2 CPU cores: every stage but the control, a micro model, a few steps
    "smoke": dict(
        model=dict(num_layers=2, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
                   vocab_size=512),
        data=dict(vocab_size=512, tokenizer_embedded_mb=0.05, embedded_max_docs=8, passkey_documents=200,
                  min_tokens=24, long_fraction=0.2, haystack_sentences=200),
        short=64, long=256, pretrain=(3, 8, 3e-3), extend=(2, 8, 1e-3), theta=(10_000.0, 500_000.0),
        keep_short_prob=0.3, control=False,
        needle=dict(min_length=136, num_lengths=3, num_depths=3, pass_keys=["71432", "28195"], max_new_tokens=4,
                    batch_size=8)),
    # the README table: the 2-layer model of tests/eval/test_needle.py, 128 -> 1024 tokens (~30 minutes on
    # 2 busy cores)
    "cpu": dict(
        model=dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=128,
                   vocab_size=1024),
        data=dict(vocab_size=1024, tokenizer_embedded_mb=0.5, embedded_max_docs=0, passkey_documents=12000,
                  min_tokens=32, long_fraction=0.1, haystack_sentences=2000),
        short=128, long=1024, pretrain=(800, 16, 5e-3), extend=(150, 4, 1e-3), theta=(10_000.0, 500_000.0),
        keep_short_prob=0.3, control=True, mixture={"passkey": 0.8, "python_code": 0.12, "python_docs": 0.08},
        needle=dict(min_length=128, num_lengths=8, num_depths=6, pass_keys=["71432", "28195", "50376", "64819"],
                    max_new_tokens=6, batch_size=16)),
    # one H100 (not measured): 8 layers x 512, 1024 -> 16384 tokens
    "gpu": dict(
        model=dict(num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64, mlp_dim=1408,
                   vocab_size=4096, dtype="bfloat16", attention_impl="auto"),
        data=dict(vocab_size=4096, tokenizer_embedded_mb=2.0, embedded_max_docs=0, passkey_documents=40000,
                  min_tokens=64, long_fraction=0.1, haystack_sentences=20000),
        short=1024, long=16384, pretrain=(2000, 32, 1e-3), extend=(200, 8, 1e-4), theta=(10_000.0, 1_000_000.0),
        keep_short_prob=0.3, control=True,
        needle=dict(min_length=1024, num_lengths=16, num_depths=10, pass_keys=["71432", "28195", "50376", "64819"],
                    max_new_tokens=6, batch_size=16)),
}
# Yi-6B 4K -> 128K as Yi-200K / Fu et al.: 5B tokens, ~4M tokens a batch, constant 2e-5
PAPER = dict(short=4096, long=131072, batch=32, tokens=5_000_000_000, lr=2e-5, theta=(5_000_000.0, 10_000_000.0),
             keep_short_prob=0.3)
PAPER_PATHS = {"model": "checkpoints/yi_6b", "tokenizer": "checkpoints/yi_6b/tokenizer.model",
               "haystack": "data/paul_graham_essays.txt",
               "sources": {"common_crawl": "data/slimpajama/common_crawl/*.jsonl", "c4": "data/slimpajama/c4/*.jsonl",
                           "github": "data/slimpajama/github/*.jsonl", "book": "data/slimpajama/book/*.jsonl",
                           "arxiv": "data/slimpajama/arxiv/*.jsonl", "wikipedia": "data/slimpajama/wikipedia/*.jsonl",
                           "stackexchange": "data/slimpajama/stackexchange/*.jsonl"}}
# LLaMA's pretraining shares (Touvron et al. 2023, Table 1), kept per source by per_source upsampling
PAPER_MIXTURE = {"common_crawl": 0.67, "c4": 0.15, "github": 0.045, "book": 0.045, "arxiv": 0.025,
                 "wikipedia": 0.045, "stackexchange": 0.02}


def _run(model: dict, seq_len: int, steps: int, batch: int, lr: float, schedule: str, rope_theta: float,
         prepared: str, init_from: str = "", upsampling: tuple = (), mixture: dict | None = None) -> ml_collections.ConfigDict:
  config = base_config("tiny")
  config.model = presets.config_dict("tiny", **{**model, "rope_theta": rope_theta, "max_seq_len": seq_len})
  overrides = {
      "train.steps": steps, "train.batch_size": batch, "train.seq_len": seq_len, "train.progress_bar": False,
      "train.log_every": max(1, steps // 50), "train.init_from": init_from,
      "optimizer.lr": lr, "optimizer.schedule": schedule, "optimizer.warmup_steps": max(1, steps // 20),
      "optimizer.weight_decay": 0.0 if schedule == "constant" else 0.1,
      "eval.every_steps": 0, "eval.batches": 0, "checkpoint.every_steps": max(1, steps // 2),
      "checkpoint.keep_last": 1, "data.prepared_dir": prepared,
  }
  if seq_len >= 1024:  # blockwise: memory linear in the length on CPU; GPU scales name their own
    overrides["model.attention_impl"] = model.get("attention_impl", "blockwise")
  config = configlib.apply_overrides(config, overrides)
  with config.unlocked():
    config.data.sources = dict(mixture or MIXTURE)
    if upsampling:
      mode, threshold, keep = upsampling
      config.data.length_upsampling = ml_collections.ConfigDict(
          {"mode": mode, "threshold": threshold, "keep_short_prob": keep})
  return config


def _needle(model_stage: str, title: str, train_length: int, short: int, long: int, needle: dict, tokenizer: str,
            haystack: str, depends_on: list) -> ml_collections.ConfigDict:
  """The needle grid of a model up to `long` tokens; scores reported in length buckets (0, short],
  (short, long/2], (long/2, long]."""
  args = dict(needle, model=f"{{stage:{model_stage}}}", tokenizer=tokenizer, haystack=haystack, max_length=long,
              train_length=train_length, title=title, bucket_edges=sorted({0, short, long // 2, long}))
  return ml_collections.ConfigDict({"kind": "python", "depends_on": depends_on, "fn": f"{STUDY}:needle_stage",
                                    "args": args})


def _small_scale(name: str) -> ml_collections.ConfigDict:
  scale = SCALES[name]
  short, long = scale["short"], scale["long"]
  study = common.new_study("long_context", name, {"seeds": 1})  # not seeded yet (its redesign: issue 21/22)
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": f"{STUDY}:prepare_data",
      "args": dict(seed=0, short_max=short, long_max=long - 8, **scale["data"])})
  prepared = "{stage:data}/prepared"
  base_theta, extended_theta = scale["theta"]
  steps, batch, lr = scale["pretrain"]
  study.stages.pretrain = ml_collections.ConfigDict({"kind": "train", "depends_on": ["data"], "run": _run(
      scale["model"], short, steps, batch, lr, "cosine", base_theta, prepared, mixture=scale.get("mixture"))})
  steps, batch, lr = scale["extend"]
  upsampling = ("per_source", short, scale["keep_short_prob"])
  arms = {"extend": extended_theta, "extend_no_abf": base_theta} if scale["control"] else {"extend": extended_theta}
  tokenizer, haystack = "{stage:data}/tokenizer", "{stage:data}/haystack.txt"
  study.stages.needle_before = _needle("pretrain", f"before extension (trained at {short})", short, short, long,
                                       scale["needle"], tokenizer, haystack, ["pretrain"])
  for arm, theta in arms.items():
    study.stages[arm] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["pretrain"], "run": _run(
        scale["model"], long, steps, batch, lr, "constant", theta, prepared, "{stage:pretrain}", upsampling,
        scale.get("mixture"))})
    label = "after extension (ABF)" if arm == "extend" else "after extension, RoPE base unchanged"
    study.stages[f"needle_after{arm[len('extend'):]}"] = _needle(arm, label, long, short, long, scale["needle"], tokenizer,
                                                                 haystack, [arm])
  needles = ["needle_before"] + [f"needle_after{arm[len('extend'):]}" for arm in arms]
  study.stages.report = ml_collections.ConfigDict({
      "kind": "python", "depends_on": ["data", "pretrain"] + list(arms) + needles,
      "fn": "yijax.studies.long_context:report_stage",
      "args": {"needles": needles, "arms": list(arms), "short": short, "long": long}})
  return study


def _paper() -> ml_collections.ConfigDict:
  """Yi-6B (`yijax convert hf-to-yijax`) by path, SlimPajama-like sources by path; meant for --dry_run here."""
  p = PAPER
  study = common.new_study("long_context", "paper", {"seeds": 1})
  study.paths = ml_collections.ConfigDict(PAPER_PATHS)
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": f"{STUDY}:prepare_paths",
      "args": {"tokenizer": study.paths.get_ref("tokenizer"), "sources": study.paths.sources}})
  paths = {k: study.paths.get_ref(k) for k in ("model", "tokenizer", "haystack")}
  steps = round(p["tokens"] / (p["batch"] * p["long"]))
  yi = presets.get("yi_6b")
  model = {k: getattr(yi, k) for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                        "head_dim", "mlp_dim", "norm_eps", "tie_embeddings")}
  model.update(dtype="bfloat16", remat_policy="full")
  run = _run(model, p["long"], steps, p["batch"], p["lr"], "constant", p["theta"][1], "{stage:data}/prepared",
             PAPER_PATHS["model"], ("per_source", p["short"], p["keep_short_prob"]))
  with run.unlocked():
    run.data.sources = dict(PAPER_MIXTURE)
    run.model.attention_impl = "auto"  # cuDNN flash attention on GPU, splash on TPU
    run.mesh.data, run.mesh.fsdp = 1, -1
    run.optimizer.warmup_steps = 0
    run.checkpoint.every_steps = 100
    run.train.init_from = paths["model"]
  study.stages.extend = ml_collections.ConfigDict({"kind": "train", "depends_on": ["data"], "run": run})
  needle = dict(min_length=1000, num_lengths=40, num_depths=10, pass_keys=[], max_new_tokens=50, batch_size=1)
  study.stages.needle_before = _needle("data", "Yi-6B before extension", p["short"], p["short"], p["long"], needle,
                                       paths["tokenizer"], paths["haystack"], ["data"])
  study.stages.needle_before.args.model = paths["model"]
  study.stages.needle_after = _needle("extend", "Yi-6B after extension", p["long"], p["short"], p["long"], needle,
                                      paths["tokenizer"], paths["haystack"], ["extend"])
  return study


def get_config(scale="smoke"):
  return common.by_scale(scale, **{name: _small_scale for name in SCALES}, paper=lambda _: _paper())(scale)
