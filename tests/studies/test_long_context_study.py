"""The long-context study at smoke scale through the study runner: pass-key data at two lengths, the
extension run's config (raised rope_theta, longer seq_len, per-source length upsampling that really
raises the long documents' share), every needle cell before and after, the heatmaps and the report."""

import json

import ml_collections
import numpy as np

from yijax import configlib
from yijax.data import pipeline
from yijax.studies import runner


def _cells(path):
  return [json.loads(line) for line in open(path)]


def test_long_context_study_smoke(tmp_path):
  study = configlib.load_config("experiments/long_context/config.py:smoke")
  runner.run_study(study, str(tmp_path))

  extend, pretrain = study.stages.extend.run, study.stages.pretrain.run
  assert extend.model.rope_theta == 50 * pretrain.model.rope_theta == 500_000.0  # ABF
  assert extend.train.seq_len == extend.model.max_seq_len == 4 * pretrain.train.seq_len == 256
  assert extend.train.init_from == "{stage:pretrain}" and extend.optimizer.schedule == "constant"
  assert extend.data.length_upsampling.mode == "per_source" and pretrain.data.length_upsampling.mode == "none"
  saved = json.load(open(tmp_path / "extend" / "config.json"))
  assert saved["model"]["rope_theta"] == 500_000.0 and saved["train"]["seq_len"] == 256

  # the upsampled mixture: long pass-key documents (> the pretraining length) hold a larger token share
  data = ml_collections.ConfigDict(extend.data.to_dict())
  data.prepared_dir = str(tmp_path / "data" / "prepared")
  shares = {}
  for mode in ("none", "per_source"):
    data.length_upsampling.mode = mode
    mixture = pipeline.train_mixture(data, 256, process_index=0, process_count=1)
    plan = {p.name: p for p in mixture.plans}["passkey"]
    shares[mode] = plan.lengths[plan.lengths > 64].sum() / plan.lengths.sum()
    assert mixture.token_shares["passkey"] == pipeline.mixture.resolved_weights(data)["passkey"]  # kept
  assert 0.2 < shares["none"] < shares["per_source"] < 1.0, shares

  results = json.load(open(tmp_path / "results.json"))
  lengths, depths = [136, 196, 256], [0.0, 50.0, 100.0]
  for stage in ("needle_before", "needle_after"):
    cells = _cells(tmp_path / stage / "needle.jsonl")
    assert [(c["length"], c["depth"]) for c in cells] == [(n, d) for n in lengths for d in depths]
    for cell in cells:
      assert set(cell["by_key"]) == {"71432", "28195"} and 0.0 <= cell["score"] <= 1.0
      assert cell["score"] == np.mean(list(cell["by_key"].values()))
    assert results["needle"][stage]["cells"] == 9 and 0.0 <= results["needle"][stage]["mean_score"] <= 1.0
    assert (tmp_path / f"{stage}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert results["needle"]["needle_before"]["rope_theta"] == 10_000.0
  assert results["needle"]["needle_after"]["rope_theta"] == 500_000.0
  assert results["train"]["extend"]["length_upsampling"]["mode"] == "per_source"
  report = (tmp_path / "report.md").read_text()
  assert "| needle_before | 10000 | 64 |" in report and "| needle_after | 500000 | 256 |" in report

  again = runner.run_study(study, str(tmp_path))  # finished: a rerun skips every stage
  assert again["ran"] == [] and len(again["skipped"]) == len(study.stages)


def test_long_context_paper_plan(tmp_path):
  """--dry_run of the paper scale: Yi-6B from a path, 4K -> 128K with the base raised, ~4M-token batches,
  5B tokens at a constant 2e-5 on the per-source upsampled mixture, the needle grid before and after."""
  plan = {p["stage"]: p for p in runner.run_study(configlib.load_config("experiments/long_context/config.py:paper"),
                                                   str(tmp_path / "paper"), dry_run=True)["plan"]}
  assert set(plan) == {"data", "extend", "needle_before", "needle_after"}
  extend = plan["extend"]
  assert extend["init_from"] == "checkpoints/yi_6b" and extend["model_params"] > 6e9
  assert extend["seq_len"] == 131072 and extend["batch_size"] * extend["seq_len"] == 4 * 2**20
  assert abs(extend["tokens"] - 5e9) < 0.01 * 5e9 and extend["lr"] == 2e-5 and extend["schedule"] == "constant"
  assert extend["rope_theta"] == 2 * 5e6 and extend["length_upsampling"] == "per_source"
  assert plan["needle_before"]["args"]["model"] == "checkpoints/yi_6b"
  assert plan["needle_after"]["args"]["max_length"] == 131072 and plan["needle_after"]["args"]["num_lengths"] == 40
  assert not (tmp_path / "paper").exists()
