"""The smoke scales of the depth up-scaling and G_stack studies, run through `yijax experiment`, and their configs."""

import importlib.util
import json
import os

import numpy as np

from yijax import cli, configlib, models
from yijax.analysis import stats
from yijax.train import params_io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERDICTS = {stats.HOLDS, stats.REFUTED, stats.NOT_RESOLVED}


def _config(study: str):
  spec = importlib.util.spec_from_file_location(f"{study}_config", os.path.join(ROOT, "experiments", study, "config.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_growth_notebook_runs_both_smoke_studies(tmp_path, monkeypatch, prepared_data):
  """colab/growth.ipynb runs `yijax experiment` at smoke scale for depth_upscaling and growth (this is
  the notebook's CI execution: tests/test_notebooks.py leaves it to this test); then both are checked."""
  from conftest import execute_notebook, notebook_images

  notebook = execute_notebook(os.path.join(ROOT, "colab", "growth.ipynb"), tmp_path, monkeypatch, prepared_data)
  assert notebook_images(notebook) >= 3  # layer_cosine.png, loss_vs_tokens.png, growth.png
  check_depth_upscaling(tmp_path / "runs" / "colab-depth_upscaling-smoke")
  check_growth(tmp_path / "runs" / "colab-growth-smoke")


def _metrics(run_dir) -> list[dict]:
  return [json.loads(line) for line in open(run_dir / "metrics.jsonl") if line.strip()]


def check_depth_upscaling(workdir):
  results = json.load(open(workdir / "results.json"))
  assert {"layer_cosine.png", "loss_vs_tokens.png", "report.md"} <= set(os.listdir(workdir))
  assert results["seeds"] == 2 and all((workdir / stage / "seed1" / "DONE.json").exists() for stage in (
      "pretrain", "cosine", "grow", "continue_yi_rule", "continue_solar", "continue_source", "scratch_12l"))
  # the candidates: every block of 4 inside layers 1..6, Yi's positional analogue (3..6, as 12..27 of 32) and
  # SOLAR's middle block (2..5) among them; Yi's rule picks the highest mean cosine of each seed's source
  assert results["yi_analogue"] == [3, 7] and results["middle_block"] == [2, 6]
  assert [c["block"] for c in results["candidates"]] == [[1, 5], [2, 6], [3, 7]]
  assert [c["block"] for c in results["candidates"] if c["yi_analogue"]] == [[3, 7]]
  for cosine, candidates, block in zip(results["per_layer_cosine"], results["candidates_by_seed"], results["rule_blocks"]):
    assert len(cosine) == 8 and block in [c["block"] for c in candidates]
    assert np.mean(cosine[block[0]:block[1]]) >= max(c["mean_cosine"] for c in candidates) - 1e-9
  assert all(len(trend) == 4 for trend in results["cosine_trend"])  # one value per kept pretraining checkpoint
  assert all(p and {"relative_improvement", "tolerance", "passed"} <= set(p) for p in results["plateau"])
  arms = results["arms"]
  assert {a: arms[a]["layers"] for a in arms} == {"yi_rule": 12, "solar": 12, "source": 8, "scratch_12l": 12}
  assert arms["solar"]["blocks"] == [[2, 6], [2, 6]] and arms["yi_rule"]["blocks"] == results["rule_blocks"]
  for arm in ("yi_rule", "solar", "source", "scratch_12l"):
    assert len(arms[arm]["final_loss"]["values"]) == 2 and np.isfinite(arms[arm]["loss_at_total_tokens"]["se"])
  # the grown model holds its source seed's layers at the order's positions (layer i = order[i])
  order = json.load(open(workdir / "grow" / "seed1" / "yi_rule" / "surgery.json"))["order"]
  _, source = params_io.load_model(str(workdir / "pretrain" / "seed1"))
  _, grown = params_io.load_model(str(workdir / "grow" / "seed1" / "yi_rule"))
  np.testing.assert_array_equal(grown["layers"]["mlp"]["up_proj"]["kernel"],
                                np.asarray(source["layers"]["mlp"]["up_proj"]["kernel"])[order])
  # duplicating a block right after itself barely moves the loss (Yi-9B Init: MMLU 63.2 -> 63.0)
  after = np.array(arms["yi_rule"]["loss_after_growth"]["values"])
  assert np.all(np.abs(after - np.array(results["source_loss"]["values"])) < 0.05)
  # batch growth on a stalled smoothed loss (smoke: every evaluation counts as a stall), and each continuation
  # ends at its token budget (train.max_tokens), not at its step bound: batch growth does not stretch it
  budget = json.load(open(workdir / "continue_source" / "seed0" / "config.json"))["train"]["max_tokens"]
  assert budget > 0
  for arm in ("yi_rule", "solar", "source"):
    assert all(sizes[-1][1] > sizes[0][1] for sizes in arms[arm]["batch_sizes"])
    for seed in (0, 1):
      run = workdir / f"continue_{arm}" / f"seed{seed}"
      rows = [r for r in _metrics(run) if "tokens_seen" in r]
      steps = json.load(open(run / "config.json"))["train"]["steps"]
      assert rows[-1]["tokens_seen"] >= budget > rows[-2]["tokens_seen"] and rows[-1]["step"] < steps
  ids = {c["id"] for c in results["claims"]}
  assert ids == {"yi_rule_beats_source", "solar_beats_source", "yi_rule_beats_scratch_12l", "solar_beats_scratch_12l",
                 "yi_rule_growth_costs_loss", "solar_growth_costs_loss", "yi_rule_beats_solar", "source_still_improves"}
  assert all(c["n_seeds"] == 2 and c["verdict"] in VERDICTS and c["paired"] for c in results["claims"])
  report = open(workdir / "report.md").read()
  assert "Yi's position" in report and "| source | 8 |" in report and "`yi_rule_beats_scratch_12l`" in report


def check_growth(workdir):
  results = json.load(open(workdir / "results.json"))
  assert {"growth.png", "report.md"} <= set(os.listdir(workdir))
  assert results["seeds"] == 2 and len(results["scratch"]["final_loss"]["values"]) == 2
  arms = results["arms"]
  assert set(arms) == {"g4_d5", "g4_d10", "random_g4_d10"}
  assert arms["g4_d5"]["d_tokens"] < arms["g4_d10"]["d_tokens"] == arms["random_g4_d10"]["d_tokens"]
  assert [arms[a]["new_layers"] for a in arms] == ["copy", "copy", "random"]
  for arm in arms.values():
    assert arm["g"] == 4 and arm["order"] == [0, 0, 0, 0]  # the 1-layer small model stacked 4 times
    assert arm["seeds"] == 2 and len(arm["curves"]) == 2 and len(arm["final_loss"]["values"]) == 2
    # FLOPs start with the small model's, counted at its own (smaller) cost per token
    assert all(curve["flops"][0] > arm["small_flops"] > 0 for curve in arm["curves"])
    for field in ("tokens", "flops"):
      speed = arm["speedup"][field]
      assert speed["target_loss"] == results["scratch"]["final_loss"]["mean"] and speed["seeds"] == 2
      assert len(speed["costs"]) == len(speed["values"]) == 2
      for cost, value in zip(speed["costs"], speed["values"]):
        assert (value is None) == (cost is None)
        if cost is not None:
          assert value == speed["scratch_cost"] / cost - 1
      if speed["reached"] == 2:
        assert speed["mean"] == np.mean(speed["values"]) and speed["cost_se"] >= stats.mean_se(speed["costs"])[1]
  ids = {c["id"]: c for c in results["claims"]}
  assert set(ids) == {f"{a}_{k}" for a in arms for k in ("lower_loss", "fewer_tokens", "fewer_flops")} | {
      "stack_beats_random"}
  assert all(c["n_seeds"] == 2 and c["verdict"] in VERDICTS for c in ids.values())
  assert ids["stack_beats_random"]["paired"] and ids["g4_d5_lower_loss"]["paired"]
  assert results["formula_d_tokens"] > results["target_tokens"] and not results["formula_in_range"]
  report = open(workdir / "report.md").read()
  assert "random_g4_d10" in report and "`g4_d5_fewer_tokens`" in report and "outside its fitted range" in report
  # paired seeds: each grown seed continues its own small model's data stream; G_random's new layers are fresh
  for seed in (0, 1):
    grown = workdir / "grow" / f"seed{seed}" / "g4_d10"
    assert json.load(open(grown / "surgery.json"))["data_state"] and (grown / "data").is_dir()
  _, stacked = params_io.load_model(str(workdir / "grow" / "seed0" / "g4_d10"))
  _, fresh = params_io.load_model(str(workdir / "grow" / "seed0" / "random_g4_d10"))
  kernel = lambda p: np.asarray(p["layers"]["mlp"]["up_proj"]["kernel"])  # noqa: E731
  np.testing.assert_array_equal(kernel(stacked)[1], kernel(stacked)[0])
  np.testing.assert_array_equal(kernel(fresh)[0], kernel(stacked)[0])
  assert not np.allclose(kernel(fresh)[1], kernel(fresh)[0])


def test_cpu_configs_are_the_redesigned_studies():
  """The cpu scales: a growth target whose cost is in its layers, every arm over 3 paired seeds; depth
  up-scaling over 2 seeds with the source continued and the grown size from scratch; stage lengths in tokens."""
  growth = _config("growth").get_config("cpu")
  assert growth.study.seeds == 3
  assert all(stage.get("seeded", False) == (name != "report") for name, stage in growth.stages.items())
  assert {"scratch", "g4_d5", "g4_d10", "random_g4_d10", "small_g4", "grow"} <= set(growth.stages)
  target = configlib.model_config(growth.stages.scratch.run)
  counts = models.param_count(target)
  assert target.num_layers == 8 and target.vocab_size == 512 and counts["non_embedding"] / counts["total"] > 0.8
  assert configlib.model_config(growth.stages.small_g4.run).num_layers == 2
  scratch = growth.stages.scratch.run.train
  assert scratch.steps * scratch.batch_size * scratch.seq_len > 1_000_000
  grow = growth.stages.grow.args.arms
  assert grow.g4_d5.d_steps == round(0.05 * scratch.steps) and grow.random_g4_d10.new_layers == "random"
  depth = _config("depth_upscaling").get_config("cpu")
  assert depth.study.seeds == 2
  assert all(stage.get("seeded", False) == (name != "report") for name, stage in depth.stages.items())
  assert {"continue_yi_rule", "continue_solar", "continue_source", "scratch_12l"} <= set(depth.stages)
  assert depth.stages.cosine.args.yi_analogue == [3, 7] and depth.stages.cosine.args.exclude_last == 1
  for arm in ("yi_rule", "solar", "source"):
    assert depth.stages[f"continue_{arm}"].run.train.max_tokens == depth.study.continue_tokens
  # the 12-layer model from scratch sees the grown models' total tokens: the source's plus a continuation's
  run = depth.stages.scratch_12l.run.train
  assert run.steps * run.batch_size * run.seq_len == (
      depth.study.pretrain_steps * run.batch_size * run.seq_len + depth.study.continue_tokens)


def test_paper_plans(capsys):
  """--dry_run: Yi-6B -> Yi-9B (8.83B parameters, 0.4T + 0.4T tokens, each stage ended by its tokens) and the
  6L -> 24L G_stack plan."""
  assert cli.main(["yijax", "experiment", f"--config={ROOT}/experiments/depth_upscaling/config.py:paper",
                   "--dry_run"]) == 0
  plan = {p["stage"]: p for p in map(json.loads, capsys.readouterr().out.splitlines())}
  assert plan["grow"]["args"]["blocks"] == {"yi_9b": [12, 28]}
  assert [12, 28] == plan["cosine"]["args"]["yi_analogue"]
  for stage in ("continue_stage1", "continue_stage2"):
    assert plan[stage]["model_params"] == 8_829_407_232 and abs(plan[stage]["tokens"] - 0.4e12) < 0.01e12
  paper = _config("depth_upscaling").get_config("paper")
  for stage in ("continue_stage1", "continue_stage2"):
    assert paper.stages[stage].run.train.max_tokens == 400_000_000_000  # batch growth cannot stretch the stage
    assert paper.stages[stage].run.train.batch_growth.factor == 2
  assert cli.main(["yijax", "experiment", f"--config={ROOT}/experiments/growth/config.py:paper", "--dry_run"]) == 0
  plan = {p["stage"]: p for p in map(json.loads, capsys.readouterr().out.splitlines())}
  assert plan["small_g4/seed0"]["steps"] + plan["g4_d10/seed0"]["steps"] == plan["scratch/seed0"]["steps"]  # d + (D - d)
  assert plan["grow/seed0"]["args"]["arms"]["g4_d10"]["source"].endswith("small_g4/seed0/checkpoints/4768")
  assert 1.0e10 < plan["report"]["args"]["formula_d_tokens"] < 1.3e10  # ~12B tokens for 1.19B params on 100B
