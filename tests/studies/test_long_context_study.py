"""The long-context study at smoke scale through the study runner: natural-length data with a few percent of
short retrieval text (random keys), Fu et al.'s arms (original mixture, per-source and global upsampling with
the RoPE base raised, per-source without) on paired seeds, the needle grid with a phrasing and a haystack that
training never saw, the held-out loss by context length, the claims and the report."""

import glob
import json
import math
import os

import numpy as np

from yijax import configlib
from yijax.data import records
from yijax.data.tokenizer import Tokenizer
from yijax.studies import long_context, runner

ARMS = ["original", "per_source", "global", "per_source_no_rope"]
CLAIMS = {"per_source_vs_original_needle", "per_source_vs_original_long_loss", "per_source_vs_global_short_loss",
          "rope_vs_none_needle", "rope_vs_none_long_loss", "extension_long_loss"}
VERDICTS = {"holds", "refuted", "not resolved"}


def _jsonl(path):
  return [json.loads(line) for line in open(path)]


def _source_documents(prepared, name):
  return [doc for shard in sorted(glob.glob(os.path.join(prepared, "train", name, f"*{records.SHARD_SUFFIX}")))
          for doc in records.read_shard(shard)]


def test_long_context_configs_arms_and_seeds():
  for scale, seeds, seeded in (("smoke", 2, {"original", "per_source"}),
                               ("cpu", 3, {"original", "per_source", "per_source_no_rope"})):
    study = configlib.load_config(f"experiments/long_context/config.py:{scale}")
    assert study.study.seeds == seeds
    assert {name for name in ARMS if study.stages[name].get("seeded")} == seeded
    assert all(study.stages[f"eval_{arm}"].get("seeded", False) == (arm in seeded) for arm in ARMS)
    pretrain = study.stages.pretrain.run
    for name in ["pretrain"] + ARMS:
      run = study.stages[name].run
      assert run.data.sources["passkey"] <= 0.05  # retrieval text: at most a few percent of the mixture
      assert set(run.data.sources) == {"python_code", "python_docs", "passkey"}
    for arm in ARMS:
      run = study.stages[arm].run
      assert run.train.init_from == "{stage:pretrain}" and run.optimizer.schedule == "constant"
      assert (pretrain.train.seq_len, run.train.seq_len, run.model.max_seq_len) == {"smoke": (64, 256, 256),
                                                                                    "cpu": (128, 1024, 1024)}[scale]
      assert run.data.length_upsampling.mode == {"original": "none", "per_source": "per_source", "global": "global",
                                                 "per_source_no_rope": "per_source"}[arm]
      assert run.data.length_upsampling.keep_short_prob == 0.1 and run.data.sources == pretrain.data.sources
      assert run.model.rope_theta == (pretrain.model.rope_theta if arm == "per_source_no_rope"
                                      else 50 * pretrain.model.rope_theta)


def test_long_context_study_smoke(tmp_path):
  study = configlib.load_config("experiments/long_context/config.py:smoke")
  runner.run_study(study, str(tmp_path))
  short, long = 64, 256

  # paired seeds: seed i of every seeded arm has train.seed + i; the unseeded arms run once (seed 0)
  seeds = {name: json.load(open(tmp_path / name / "config.json"))["train"]["seed"]
           for name in ("original/seed0", "original/seed1", "per_source/seed0", "per_source/seed1", "global")}
  assert seeds["original/seed1"] == seeds["per_source/seed1"] == seeds["original/seed0"] + 1 == seeds["global"] + 1

  # the data: natural pieces of every length shape, retrieval documents short only with random keys
  data = json.load(open(tmp_path / "data" / "DONE.json"))["summary"]
  assert data["passkey_max_tokens"] + 2 <= short and data["sources"]["passkey"]["long_documents"] == 0
  assert data["sources"]["python_code"]["long_documents"] > 0 and data["sources"]["python_code"]["max_tokens"] <= long
  prepared = str(tmp_path / "data" / "prepared")
  tokenizer = Tokenizer(str(tmp_path / "data" / "tokenizer"))
  passkey = [tokenizer.decode(doc.tolist()) for doc in _source_documents(prepared, "passkey")]
  keys = [text.split()[-1] for text in passkey]
  assert all(len(k) == 5 and k.isdigit() for k in keys) and len(set(keys)) > 0.9 * len(keys)  # random keys
  questions = [q for _, q in long_context.TRAIN_PHRASINGS]
  assert all(any(q in text for q in questions) for text in passkey)

  # the evaluation: a phrasing and a haystack that training never saw
  eval_needle, eval_question = long_context.EVAL_PHRASING
  assert (eval_needle, eval_question) not in long_context.TRAIN_PHRASINGS
  assert data["eval_marker_in_training"] == 0 and data["haystack_in_training"] == 0
  natural = [tokenizer.decode(doc.tolist()) for name in ("python_docs", "python_code")
             for doc in _source_documents(prepared, name)]
  training = "\n".join(natural + passkey).lower()
  assert long_context.EVAL_MARKER in eval_question.lower() and long_context.EVAL_MARKER not in training
  haystack = (tmp_path / "data" / "haystack.txt").read_text()
  assert not any(len(piece) > 80 and piece in haystack for piece in natural)
  lengths, depths, eval_keys = [64, 256], [0.0, 100.0], set()
  for stage in ["eval_before", "eval_global", "eval_per_source/seed0", "eval_per_source/seed1"]:
    summary = json.load(open(tmp_path / stage / "DONE.json"))["summary"]
    assert summary["needle"]["phrasing"] == list(long_context.EVAL_PHRASING)
    cells = _jsonl(tmp_path / stage / "needle.jsonl")
    assert [(c["length"], c["depth"]) for c in cells] == [(n, d) for n in lengths for d in depths]
    for cell in cells:
      assert len(cell["by_key"]) == 2 and all(len(k) == 5 for k in cell["by_key"]) and 0.0 <= cell["score"] <= 1.0
      assert cell["score"] == np.mean(list(cell["by_key"].values()))
    assert summary["needle"]["keys"] == list(cells[0]["by_key"])
    eval_keys |= set(cells[0]["by_key"])
    # per-length validation loss on held-out text, next to the needle score
    loss = json.load(open(tmp_path / stage / "loss.json"))
    assert set(loss["by_length"]) == {"1-64", "65-128", "129-256"} and loss["windows"] == 4
    assert all(math.isfinite(v) and v > 0 for v in loss["by_length"].values())

  assert len(eval_keys) == 2  # the same random keys for every model
  results = json.load(open(tmp_path / "results.json"))
  assert set(results["arms"]) == set(ARMS)
  assert [results["arms"][a]["seeds"] for a in ARMS] == [2, 2, 1, 1]
  for arm, entry in results["arms"].items():
    assert set(entry["metrics"]) == {"needle_short", "needle_long", "loss_short", "loss_mid", "loss_long"}
    assert all(math.isfinite(v) for v in entry["per_seed"]["loss_long"])
    assert entry["mixture"]["shares"]["passkey"] <= 0.05  # measured on the prepared data, after upsampling
  mix = {arm: results["arms"][arm]["mixture"] for arm in ARMS}
  assert mix["per_source"]["shares"] == mix["original"]["shares"]  # per source: the shares stay
  assert mix["per_source"]["long_token_share_overall"] > mix["original"]["long_token_share_overall"]
  assert mix["global"]["shares"]["python_code"] > mix["original"]["shares"]["python_code"]  # global: they shift
  assert results["before"]["mixture"]["shares"]["passkey"] == mix["original"]["shares"]["passkey"]
  claims = {c["id"]: c for c in results["claims"]}
  assert set(claims) == CLAIMS and all(c["verdict"] in VERDICTS for c in claims.values())
  assert claims["per_source_vs_original_long_loss"]["n_seeds"] == 2 and claims["rope_vs_none_long_loss"]["n_seeds"] == 1
  assert claims["rope_vs_none_needle"]["verdict"] == "not resolved"  # one seed: its se is unknown
  assert "passed" in results["gate"]
  report = (tmp_path / "report.md").read_text()
  assert all(f"`{claim_id}`" in report for claim_id in CLAIMS) and all(f"| {arm} |" in report for arm in ARMS)
  for png in ["loss_by_length.png", "needle_before.png"] + [f"needle_{arm}.png" for arm in ARMS]:
    assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  again = runner.run_study(study, str(tmp_path))  # finished: a rerun skips every stage
  assert again["ran"] == [] and len(again["skipped"]) == len(runner.expand(study))


def test_long_context_paper_plan(tmp_path):
  """--dry_run of the paper scale: Fu et al.'s arms on Yi-6B from a path, 4K -> 80K (Fu et al.'s length, not Yi's
  200K), ~4M-token batches, 5B tokens at a constant 2e-5, rope_theta as the published configs say, Fu et al.'s
  needle grid, layout and score."""
  config = configlib.load_config("experiments/long_context/config.py:paper")
  plan = {p["stage"]: p for p in runner.run_study(config, str(tmp_path / "paper"), dry_run=True)["plan"]}
  assert set(plan) == {"data", "eval_before"} | set(ARMS) | {f"eval_{arm}" for arm in ARMS}
  for arm in ARMS:
    extend = plan[arm]
    assert extend["init_from"] == "checkpoints/yi_6b" and extend["model_params"] > 6e9
    assert extend["seq_len"] == 81920 and abs(extend["batch_size"] * extend["seq_len"] - 4e6) < 0.1 * 4e6
    assert abs(extend["tokens"] - 5e9) < 0.01 * 5e9 and extend["lr"] == 2e-5 and extend["schedule"] == "constant"
    # Yi-6B's base (5e6, which Yi-6B-200K's published config.json keeps) or Yi-9B-200K's published 1e7
    assert extend["rope_theta"] == (5e6 if arm == "per_source_no_rope" else 1e7)
    assert config.stages[arm].run.data.length_upsampling.keep_short_prob == 0.1
    assert plan[f"eval_{arm}"]["args"]["max_length"] == 131072 and plan[f"eval_{arm}"]["args"]["train_length"] == 81920
  assert plan["eval_before"]["args"]["model"] == "checkpoints/yi_6b"
  args = plan["eval_original"]["args"]
  assert args["num_lengths"] == 40 and args["num_depths"] == 10 and args["phrasing"] == []
  assert args["layout"] == "fu2024" and args["scoring"] == "fu2024"
  assert config.attribution.fu2024.to_length == 81920 and config.attribution.yi_200k.max_position_embeddings == 200000
  assert not (tmp_path / "paper").exists()
