"""The unlearning study end to end at smoke scale through `yijax experiment`, and the paper plan."""

import json
import subprocess
import sys

import pytest

from yijax import configlib

CONFIG = "experiments/unlearning/config.py"


def _experiment(*args):
  result = subprocess.run([sys.executable, "-m", "yijax.cli", "experiment", *args], capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def test_smoke_study_writes_results_report_and_plot(tmp_path):
  workdir = tmp_path / "study"
  _experiment(f"--config={CONFIG}:smoke", f"--workdir={workdir}")
  results = json.loads((workdir / "results.json").read_text())
  assert set(results["arms"]) == {"ga_lr0_ep2", "ga_gd_in_lr0_ep2", "ga_kl_general_lr0_ep2"}
  assert [results["arms"][a]["steps"] for a in sorted(results["arms"])] == [4, 4, 2]  # paired: half the forget rows
  original = results["original"]
  for row in [original, results["retrain"], *results["arms"].values()]:
    assert all(row[f"{s}_ppl"] > 1 and 0 <= row[f"{s}_acc"] <= 1 for s in results["sets"])
    assert 0.5 <= row["mia_auc"] <= 1
  for arm in results["arms"].values():
    assert arm["retrain_over_unlearn_flops"] > 1
  assert results["arms"]["ga_lr0_ep2"]["forget_ppl"] > original["forget_ppl"]  # ascent raised the forget loss
  assert results["proxy"]["retrain_forget_ppl"] == results["retrain"]["forget_ppl"]
  report = (workdir / "report.md").read_text()
  assert "retrain (gold)" in report and "ascent + KL (general)" in report
  assert (workdir / "forget_vs_general.png").stat().st_size > 1000
  rerun = _experiment(f"--config={CONFIG}:smoke", f"--workdir={workdir}")
  assert "ran nothing" in rerun


def test_paper_dry_run_plans_the_reference_recipe(tmp_path):
  plan = [json.loads(line) for line in _experiment(f"--config={CONFIG}:paper", f"--workdir={tmp_path}",
                                                    "--dry_run").splitlines() if line.startswith("{")]
  arms = [p for p in plan if p["kind"] == "train"]
  assert len(arms) == 7 and not (tmp_path / "data").exists()
  for arm in arms:
    assert arm["seq_len"] == 4096 and arm["batch_size"] == 680 and 6e9 < arm["model_params"] < 6.1e9
    paired = arm["stage"].startswith(("ga_gd", "ga_kl"))  # 340 forget + 340 retain chunks per step
    assert arm["steps"] == (8 if paired else 4)
  study = configlib.load_config(f"{CONFIG}:paper", {"paths.model": "/models/yi"})
  assert study.stages.ga_kl_in_lr0_ep1.run.train.reference_from == "/models/yi"
  assert study.stages.ga_kl_in_lr0_ep1.run.optimizer.schedule == "hf_cosine"


@pytest.mark.parametrize("scale", ["cpu", "gpu"], ids=["cpu_scale", "gpu_scale"])  # "gpu" alone marks a GPU test
def test_scales_resolve(scale):
  study = configlib.load_config(f"{CONFIG}:{scale}")
  arms = [n for n in study.stages if n not in ("data", "pretrain", "retrain", "evaluate", "report")]
  assert len(arms) == 7 * 3 * 2
  assert study.stages.evaluate.args.models.retrain == "{stage:retrain}"
