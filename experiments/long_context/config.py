"""Context extension by continual pretraining (Fu et al. 2024, "Data Engineering for Scaling Language Models to
128K Context"; Yi-200K): extend a model pretrained at a short length on natural data, comparing Fu et al.'s
data arms (the original mixture, per-source length upsampling, global upsampling) with the RoPE base raised,
and per-source upsampling without the base change; read the needle score (an unseen phrasing in an unseen
haystack) and the held-out loss by context length, over paired seeds.

  yijax experiment --config=experiments/long_context/config.py:smoke --workdir=/tmp/long_context_smoke
  nice -n 5 yijax experiment --config=experiments/long_context/config.py:cpu --workdir=runs/long_context \\
      --results_dir=experiments/long_context/results/cpu
  yijax experiment --config=experiments/long_context/config.py:paper --workdir=runs/yi_6b_80k --dry_run

Stages (small scales; yijax/studies/long_context.py): data (a tokenizer; the embedded corpus's train
documents cut into natural-length pieces, python_docs and python_code; `passkey`: short retrieval documents
with random keys in TRAIN_PHRASINGS, at most 3% of the tokens; held-out haystack and loss windows) ->
pretrain (from scratch at the short length on MIXTURE) -> eval_before -> the arms, continual pretraining at
the target length from the pretrained model at a constant LR:
  original            MIXTURE as in pretraining, RoPE base raised                                   seeded
  per_source          each source keeps its share, within it documents > short kept, shorter ones
                      with p = 0.1 (Fu et al.), RoPE base raised                                    seeded
  global              the same filter on the mixed stream (source shares shift toward the long
                      sources), RoPE base raised                                                    1 seed at cpu
  per_source_no_rope  per_source with the RoPE base unchanged                                       seeded
-> eval_<arm> (the needle grid with EVAL_PHRASING and random keys up to the target length, the held-out
loss by context length) -> report (results.json, report.md, the PNGs; claims over paired seeds).
paper: Fu et al.'s protocol on Yi-6B (converted, by path): 4K -> 80K (their length; Yi's 200K models are
another setting, ATTRIBUTION), 5B tokens in batches of 48 x 81,920 (~3.9M) tokens at a constant 2e-5, the
SlimPajama sources at LLaMA's shares, the needle grid of Fu et al. (1K-128K, 40 x 10, their layout and score).
"""

import ml_collections

from yijax import configlib
from yijax.models import presets
from yijax.studies import common
from yijax.train.config import base_config

STUDY = "yijax.studies.long_context"
# the pretraining mixture = the `original` arm's: natural text and at most a few percent of retrieval text
MIXTURE = {"python_code": 0.77, "python_docs": 0.20, "passkey": 0.03}
ARMS = ("original", "per_source", "global", "per_source_no_rope")
HEADLINE = ("per_source", "original")
KEEP_SHORT_PROB = 0.1  # Fu et al.: short documents kept with probability 0.1 by length upsampling
LABELS = {"original": "the pretraining mixture, no upsampling, RoPE base raised",
          "per_source": "per-source length upsampling (short kept with p = 0.1), RoPE base raised",
          "global": "global length upsampling (short kept with p = 0.1), RoPE base raised",
          "per_source_no_rope": "per-source length upsampling, RoPE base unchanged"}
UPSAMPLING = {"original": "none", "per_source": "per_source", "global": "global", "per_source_no_rope": "per_source"}
# the rope_theta of Yi's 200K models in their published config.json on Hugging Face (revisions read for this
# study, not re-checked since; README "Attributions"). Fu et al. give no base of their own: they raise it as
# Xiong et al. (2023) do (10,000 -> 500,000 for LLaMA-2).
ATTRIBUTION = {
    "fu2024": {"model": "LLaMA-2 7B", "from_length": 4096, "to_length": 81920, "tokens": 5_000_000_000, "lr": 2e-5,
               "rope_theta": "not their own: Xiong et al. (2023), 10,000 -> 500,000"},
    "yi_200k": {"max_position_embeddings": 200000,
                "rope_theta": {"Yi-6B-200K": "5e6 (config.json, revision 9b7abaa; Yi-6B's base is 5e6 too)",
                               "Yi-34B-200K": "5e6 in revisions 837927e and d1466f8; a later revision reported as "
                                              "1e7 (HF discussion 19): not verified",
                               "Yi-9B-200K": "1e7 (config.json, main; max_position_embeddings 262144)"}},
}

SCALES = {
    # seconds on 2 CPU cores: every stage and arm, a micro model, a few steps, the headline pair on 2 seeds
    "smoke": dict(
        model=dict(num_layers=2, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
                   vocab_size=512),
        data=dict(vocab_size=512, tokenizer_embedded_mb=0.05, embedded_max_docs=6, passkey_documents=120,
                  min_tokens=16, long_fraction={"python_docs": 0.1, "python_code": 0.3}, loss_windows=4),
        knobs=dict(seeds=2, pretrain_steps=4, pretrain_lr=3e-3, extend_steps=2, extend_lr=1e-3),
        short=64, long=256, pretrain_batch=8, extend_batch=8, theta=(10_000.0, 500_000.0), seeded=HEADLINE,
        min_short_score=0.5,
        needle=dict(min_length=64, num_lengths=2, num_depths=2, num_keys=2, max_new_tokens=4, batch_size=8,
                    loss_batch_size=4)),
    # the README's table: the 2-layer x 64 model of tests/eval/test_needle.py, 128 -> 1024 tokens, 3 paired seeds
    # of every arm but `global` (about 35 minutes on 2 cores: README)
    "cpu": dict(
        model=dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=128,
                   vocab_size=1024),
        data=dict(vocab_size=1024, tokenizer_embedded_mb=0.5, embedded_max_docs=0, passkey_documents=3000,
                  min_tokens=24, long_fraction={"python_docs": 0.05, "python_code": 0.2}, loss_windows=24),
        knobs=dict(seeds=3, pretrain_steps=800, pretrain_lr=5e-3, extend_steps=60, extend_lr=1e-3),
        short=128, long=1024, pretrain_batch=16, extend_batch=4, theta=(10_000.0, 500_000.0),
        seeded=("original", "per_source", "per_source_no_rope"), min_short_score=0.5,
        needle=dict(min_length=128, num_lengths=8, num_depths=4, num_keys=3, max_new_tokens=6, batch_size=16,
                    loss_batch_size=8)),
    # one H100 (not run): 8 layers x 512, 1024 -> 16384 tokens
    "gpu": dict(
        model=dict(num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64, mlp_dim=1408,
                   vocab_size=4096, dtype="bfloat16", attention_impl="auto"),
        data=dict(vocab_size=4096, tokenizer_embedded_mb=2.0, embedded_max_docs=0, passkey_documents=20000,
                  min_tokens=64, long_fraction={"python_docs": 0.05, "python_code": 0.2}, loss_windows=64),
        knobs=dict(seeds=3, pretrain_steps=3000, pretrain_lr=1e-3, extend_steps=200, extend_lr=1e-4),
        short=1024, long=16384, pretrain_batch=32, extend_batch=8, theta=(10_000.0, 500_000.0), seeded=ARMS,
        min_short_score=0.5,
        needle=dict(min_length=1024, num_lengths=16, num_depths=10, num_keys=4, max_new_tokens=8, batch_size=16,
                    loss_batch_size=4)),
}
# Fu et al.'s recipe on Yi-6B at their 80K (see ATTRIBUTION for what each number rests on)
PAPER = dict(short=4096, long=81920, batch=48, tokens=5_000_000_000, lr=2e-5, needle_max=131072,
             theta=(5_000_000.0, 10_000_000.0))
PAPER_PATHS = {"model": "checkpoints/yi_6b", "tokenizer": "checkpoints/yi_6b/tokenizer.model",
               "haystack": "data/paul_graham_essays.txt",
               "sources": {"common_crawl": "data/slimpajama/common_crawl/*.jsonl", "c4": "data/slimpajama/c4/*.jsonl",
                           "github": "data/slimpajama/github/*.jsonl", "book": "data/slimpajama/book/*.jsonl",
                           "arxiv": "data/slimpajama/arxiv/*.jsonl", "wikipedia": "data/slimpajama/wikipedia/*.jsonl",
                           "stackexchange": "data/slimpajama/stackexchange/*.jsonl"}}
# LLaMA's pretraining shares (Touvron et al. 2023, Table 1): Fu et al.'s original mixture
PAPER_MIXTURE = {"common_crawl": 0.67, "c4": 0.15, "github": 0.045, "book": 0.045, "arxiv": 0.025,
                 "wikipedia": 0.045, "stackexchange": 0.02}


def _run(model: dict, seq_len: int, batch: int, rope_theta: float, prepared: str, init_from: str = "",
         upsampling: str = "none", threshold: int = 0, mixture: dict | None = None) -> ml_collections.ConfigDict:
  config = base_config("tiny")
  config.model = presets.config_dict("tiny", **{**model, "rope_theta": rope_theta, "max_seq_len": seq_len})
  overrides = {
      "train.batch_size": batch, "train.seq_len": seq_len, "train.progress_bar": False, "train.init_from": init_from,
      "optimizer.schedule": "constant" if init_from else "cosine", "optimizer.weight_decay": 0.0 if init_from else 0.1,
      "eval.every_steps": 0, "eval.batches": 0, "checkpoint.keep_last": 1, "data.prepared_dir": prepared,
  }
  if seq_len >= 1024:  # blockwise: memory linear in the length on CPU; GPU scales name their own
    overrides["model.attention_impl"] = model.get("attention_impl", "blockwise")
  config = configlib.apply_overrides(config, overrides)
  with config.unlocked():
    config.data.sources = dict(mixture or MIXTURE)
    config.data.length_upsampling = ml_collections.ConfigDict(
        {"mode": upsampling, "threshold": threshold, "keep_short_prob": KEEP_SHORT_PROB})
  return config


def _steps(run: ml_collections.ConfigDict, steps, lr) -> ml_collections.ConfigDict:
  """Steps and LR from the study's knobs (FieldReferences); logging, warmup and checkpoints follow the steps."""
  common.link(run, {"train.steps": steps, "optimizer.lr": lr})
  total = steps.get() if hasattr(steps, "get") else steps
  with run.unlocked():
    run.train.log_every = max(1, total // 50)
    run.optimizer.warmup_steps = max(1, total // 20) if run.optimizer.schedule == "cosine" else 0
    run.checkpoint.every_steps = max(1, total // 2)
  return run


def _evaluate(model_stage: str, title: str, train_length: int, short: int, long: int, needle: dict, paths: dict,
              depends_on: list, seeded: bool, max_length: int = 0, phrasing=None, layout: str = "yijax",
              scoring: str = "words") -> ml_collections.ConfigDict:
  """The needle grid up to `max_length` (default `long`) and the held-out loss by context length; buckets
  (0, short], (short, long/2], (long/2, long]."""
  from yijax.studies.long_context import EVAL_PHRASING

  args = dict(needle, model=f"{{stage:{model_stage}}}", tokenizer=paths["tokenizer"], haystack=paths["haystack"],
              windows=paths.get("windows", ""), max_length=max_length or long, train_length=train_length, title=title,
              bucket_edges=sorted({0, short, long // 2, long}), key_seed=1234,
              phrasing=list(EVAL_PHRASING if phrasing is None else phrasing), layout=layout, scoring=scoring)
  return ml_collections.ConfigDict({"kind": "python", "depends_on": depends_on, "fn": f"{STUDY}:evaluate_stage",
                                    "args": args, "seeded": seeded})


def _small_scale(name: str) -> ml_collections.ConfigDict:
  scale = SCALES[name]
  short, long = scale["short"], scale["long"]
  study = common.new_study("long_context", name, dict(scale["knobs"]))
  knobs = study.study
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": f"{STUDY}:prepare_data",
      "args": dict(seed=0, short_max=short, long_max=long, **scale["data"])})
  prepared = "{stage:data}/prepared"
  base_theta, extended_theta = scale["theta"]
  pretrain = _run(scale["model"], short, scale["pretrain_batch"], base_theta, prepared)
  _steps(pretrain, knobs.get_ref("pretrain_steps"), knobs.get_ref("pretrain_lr"))
  study.stages.pretrain = ml_collections.ConfigDict({"kind": "train", "depends_on": ["data"], "run": pretrain})
  files = {"tokenizer": "{stage:data}/tokenizer", "haystack": "{stage:data}/haystack.txt",
           "windows": "{stage:data}/loss_windows.npy"}
  study.stages.eval_before = _evaluate("pretrain", f"before extension (trained at {short})", short, short, long,
                                       scale["needle"], files, ["pretrain"], False)
  for arm in ARMS:
    theta = base_theta if arm.endswith("_no_rope") else extended_theta
    run = _run(scale["model"], long, scale["extend_batch"], theta, prepared, "{stage:pretrain}", UPSAMPLING[arm], short)
    _steps(run, knobs.get_ref("extend_steps"), knobs.get_ref("extend_lr"))
    seeded = arm in scale["seeded"]
    study.stages[arm] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["pretrain"], "run": run,
                                                   "seeded": seeded})
    study.stages[f"eval_{arm}"] = _evaluate(arm, f"{arm}: {LABELS[arm]}", long, short, long, scale["needle"], files,
                                            [arm], seeded)
  study.stages.report = ml_collections.ConfigDict({
      "kind": "python", "depends_on": ["data", "pretrain", "eval_before"] + [s for a in ARMS for s in (a, f"eval_{a}")],
      "fn": f"{STUDY}:report_stage",
      "args": {"arms": list(ARMS), "before": "eval_before", "labels": LABELS, "short": short, "long": long,
               "min_short_score": scale["min_short_score"], "headline": list(HEADLINE)}})
  return study


def _paper() -> ml_collections.ConfigDict:
  """Yi-6B (`yijax convert hf-to-yijax`) by path, SlimPajama-like sources by path; meant for --dry_run here."""
  p = PAPER
  study = common.new_study("long_context", "paper", {"seeds": 1})
  study.paths = ml_collections.ConfigDict(PAPER_PATHS)
  study.attribution = ml_collections.ConfigDict(ATTRIBUTION)
  study.stages.data = ml_collections.ConfigDict({
      "kind": "python", "depends_on": [], "fn": f"{STUDY}:prepare_paths",
      "args": {"tokenizer": study.paths.get_ref("tokenizer"), "sources": study.paths.sources}})
  files = {k: study.paths.get_ref(k) for k in ("model", "tokenizer", "haystack")}
  steps = round(p["tokens"] / (p["batch"] * p["long"]))
  yi = presets.get("yi_6b")
  model = {k: getattr(yi, k) for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                        "head_dim", "mlp_dim", "norm_eps", "tie_embeddings")}
  model.update(dtype="bfloat16", remat_policy="full")
  base_theta, extended_theta = p["theta"]
  needle = dict(min_length=1000, num_lengths=40, num_depths=10, num_keys=0, max_new_tokens=50, batch_size=1,
                loss_batch_size=1)
  eval_files = {"tokenizer": files["tokenizer"], "haystack": files["haystack"]}
  study.stages.eval_before = _evaluate("data", "Yi-6B before extension", p["short"], p["short"], p["long"], needle,
                                       eval_files, ["data"], False, p["needle_max"], (), "fu2024", "fu2024")
  study.stages.eval_before.args.model = files["model"]
  for arm in ARMS:
    theta = base_theta if arm.endswith("_no_rope") else extended_theta
    run = _run(model, p["long"], p["batch"], theta, "{stage:data}/prepared", PAPER_PATHS["model"], UPSAMPLING[arm],
               p["short"], PAPER_MIXTURE)
    _steps(run, steps, p["lr"])
    with run.unlocked():
      run.model.attention_impl = "auto"  # cuDNN flash attention on GPU, splash on TPU
      run.mesh.data, run.mesh.fsdp = 1, -1
      run.checkpoint.every_steps = 100
      run.train.init_from = files["model"]
    study.stages[arm] = ml_collections.ConfigDict({"kind": "train", "depends_on": ["data"], "run": run})
    study.stages[f"eval_{arm}"] = _evaluate(arm, f"Yi-6B, {arm}", p["long"], p["short"], p["long"], needle,
                                            eval_files, [arm], False, p["needle_max"], (), "fu2024", "fu2024")
  return study


def get_config(scale="smoke"):
  return common.by_scale(scale, **{name: _small_scale for name in SCALES}, paper=lambda _: _paper())(scale)
