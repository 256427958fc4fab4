"""The smoke scales of the depth up-scaling and G_stack studies, run through `yijax experiment`."""

import json
import os

import numpy as np

from yijax import cli
from yijax.train import params_io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_growth_notebook_runs_both_smoke_studies(tmp_path, monkeypatch, prepared_data):
  """colab/growth.ipynb runs `yijax experiment` at smoke scale for depth_upscaling and growth (this is
  the notebook's CI execution: tests/test_notebooks.py leaves it to this test); then both are checked."""
  from conftest import execute_notebook, notebook_images

  notebook = execute_notebook(os.path.join(ROOT, "colab", "growth.ipynb"), tmp_path, monkeypatch, prepared_data)
  assert notebook_images(notebook) >= 3  # layer_cosine.png, loss_vs_tokens.png, growth.png
  check_depth_upscaling(tmp_path / "runs" / "colab-depth_upscaling-smoke")
  check_growth(tmp_path / "runs" / "colab-growth-smoke")


def check_depth_upscaling(workdir):
  results = json.load(open(workdir / "results.json"))
  assert {"layer_cosine.png", "loss_vs_tokens.png", "report.md"} <= set(os.listdir(workdir))
  # the rule's block: 4 contiguous layers inside 1..5, the highest mean cosine among the candidates
  cosine, (start, end) = results["per_layer_cosine"], results["rule_block"]
  assert len(cosine) == 8 and end - start == 4 and 1 <= start <= 2
  assert np.mean(cosine[start:end]) >= max(np.mean(cosine[s:s + 4]) for s in (1, 2))
  assert len(results["cosine_trend"]) == 4  # one value per kept pretraining checkpoint
  arms = results["arms"]
  assert {a: arms[a]["layers"] for a in arms} == {"max_cosine": 12, "min_cosine": 12, "control": 8}
  assert sorted([arms["max_cosine"]["block"], arms["min_cosine"]["block"]]) == [[1, 5], [2, 6]]
  # the grown model holds the source's layers at the order's positions (layer i = order[i])
  order = json.load(open(workdir / "grow" / "max_cosine" / "surgery.json"))["order"]
  _, source = params_io.load_model(str(workdir / "pretrain"))
  _, grown = params_io.load_model(str(workdir / "grow" / "max_cosine"))
  np.testing.assert_array_equal(grown["layers"]["mlp"]["up_proj"]["kernel"],
                                np.asarray(source["layers"]["mlp"]["up_proj"]["kernel"])[order])
  # duplicating a block right after itself barely moves the loss (Yi-9B Init: MMLU 63.2 -> 63.0)
  assert abs(arms["max_cosine"]["loss_after_growth"] - results["source_loss"]) < 0.05
  # batch growth on a stalled smoothed loss (smoke: every evaluation counts as a stall)
  assert all(a["batch_sizes"][-1][1] > a["batch_sizes"][0][1] for a in arms.values())
  report = open(workdir / "report.md").read()
  assert f"{start}..{end - 1}" in report and "control (8L)" in report


def check_growth(workdir):
  results = json.load(open(workdir / "results.json"))
  assert {"growth.png", "report.md"} <= set(os.listdir(workdir))
  arms = results["arms"]
  assert set(arms) == {"g4_d10", "g4_d20"}
  assert arms["g4_d10"]["d_tokens"] < arms["g4_d20"]["d_tokens"]
  for arm in arms.values():
    assert arm["g"] == 4 and arm["order"] == [0, 0, 0, 0]  # the 1-layer small model stacked 4 times
    # FLOPs start with the small model's, counted at its own (smaller) cost per token
    assert arm["curve"]["flops"][0] > arm["small_flops"] > 0
    if arm["speedup"] is not None:
      assert arm["speedup"] == arm["scratch_flops"] / arm["grown_flops"] - 1
  assert results["best_d_arm"] in arms and results["formula_d_tokens"] > results["target_tokens"]
  assert not results["formula_in_range"]
  report = open(workdir / "report.md").read()
  assert "g4_d20" in report and "outside its fitted range" in report
  # the continued data stream: the grown run started from the small run's iterator state at d
  grown = workdir / "grow" / "g4_d10"
  assert json.load(open(grown / "surgery.json"))["data_state"] and (grown / "data").is_dir()


def test_paper_plans(capsys):
  """--dry_run: Yi-6B -> Yi-9B (8.83B parameters, 0.4T + 0.4T tokens) and the 6L -> 24L G_stack plan."""
  assert cli.main(["yijax", "experiment", f"--config={ROOT}/experiments/depth_upscaling/config.py:paper",
                   "--dry_run"]) == 0
  plan = {p["stage"]: p for p in map(json.loads, capsys.readouterr().out.splitlines())}
  assert plan["grow"]["args"]["blocks"] == {"yi_9b": [12, 28]}
  for stage in ("continue_stage1", "continue_stage2"):
    assert plan[stage]["model_params"] == 8_829_407_232 and abs(plan[stage]["tokens"] - 0.4e12) < 0.01e12
  assert cli.main(["yijax", "experiment", f"--config={ROOT}/experiments/growth/config.py:paper", "--dry_run"]) == 0
  plan = {p["stage"]: p for p in map(json.loads, capsys.readouterr().out.splitlines())}
  assert plan["small_g4"]["steps"] + plan["g4_d20"]["steps"] == plan["scratch"]["steps"]  # d + (D - d) = D
  assert plan["grow"]["args"]["arms"]["g4_d10"]["source"].endswith("small_g4/checkpoints/4768")
  assert 1.0e10 < plan["report"]["args"]["formula_d_tokens"] < 1.3e10  # ~12B tokens for 1.19B params on 100B
