"""The unlearning study end to end at smoke scale through the study runner, and the paper plan.

In-process (no `yijax experiment` subprocess: the CLI path is tests/studies/test_runner.py's) and two of
the smoke scale's three arms: ascent + descent (paired retain rows, per-sequence factors) and ascent + KL
to the general set (the frozen reference model inside the step); plain ascent differs from the first only
in its objective, which tests/unlearning/test_objectives.py checks against numpy.
"""

import json

import pytest

from yijax import configlib
from yijax.studies import runner

CONFIG = "experiments/unlearning/config.py"
ARMS = ("ga_gd_in_lr0_ep2", "ga_kl_general_lr0_ep2")


def _smoke_study():
  study = configlib.load_config(f"{CONFIG}:smoke")
  with study.unlocked():
    del study.stages["ga_lr0_ep2"]
    del study.stages.evaluate.args.models["ga_lr0_ep2"]
    study.stages.evaluate.depends_on = [d for d in study.stages.evaluate.depends_on if d != "ga_lr0_ep2"]
    study.stages.report.args.arms = [a for a in study.stages.report.args.arms if a["name"] in ARMS]
  return study


def test_smoke_study_writes_results_report_and_plot(tmp_path):
  study = _smoke_study()
  first = runner.run_study(study, str(tmp_path))
  assert {"data", "pretrain", "retrain", *ARMS, "evaluate", "report"} == set(first["ran"])
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["arms"]) == set(ARMS)
  assert [results["arms"][a]["steps"] for a in ARMS] == [4, 4]  # 32 forget chunks, 4 per step (paired), 2 epochs
  data = first["summaries"]["data"]["sets"]
  assert data["retrain"]["tokens"] == data["pretrain"]["tokens"] - data["forget"]["tokens"] > 0  # gold: no forget set
  assert dict(study.stages.retrain.run.data.sources) == {"retrain": 1.0}
  original = results["original"]
  for row in [original, results["retrain"], *results["arms"].values()]:
    assert all(row[f"{s}_ppl"] > 1 and 0 <= row[f"{s}_acc"] <= 1 for s in results["sets"])
    assert 0.5 <= row["mia_auc"] <= 1 and set(row["mia_auc_by_k"]) == {"30", "40", "50", "60", "100"}
  for arm in results["arms"].values():
    assert arm["retrain_over_unlearn_flops"] > 1
    assert arm["forget_ppl"] > original["forget_ppl"]  # the ascent raised the forget loss
  kl = results["arms"]["ga_kl_general_lr0_ep2"]
  assert kl["flops"] > results["arms"]["ga_gd_in_lr0_ep2"]["flops"]  # + the reference model's forward passes
  assert results["proxy"]["retrain_forget_ppl"] == results["retrain"]["forget_ppl"]
  assert set(results["robustness"]) == {"ga_gd_in", "ga_kl_general"}
  report = (tmp_path / "report.md").read_text()
  assert "retrain (gold)" in report and "ascent + KL (general)" in report
  assert (tmp_path / "forget_vs_general.png").stat().st_size > 1000
  assert runner.run_study(study, str(tmp_path))["ran"] == []  # resumes: every stage done


def test_paper_dry_run_plans_the_reference_recipe(tmp_path):
  study = configlib.load_config(f"{CONFIG}:paper")
  plan = runner.run_study(study, str(tmp_path), dry_run=True)["plan"]
  arms = [p for p in plan if p["kind"] == "train"]
  assert len(arms) == 7 and not (tmp_path / "data").exists()
  for arm in arms:
    assert arm["seq_len"] == 4096 and arm["batch_size"] == 680 and 6e9 < arm["model_params"] < 6.1e9
    paired = arm["stage"].startswith(("ga_gd", "ga_kl"))  # 340 forget + 340 retain chunks per step
    assert arm["steps"] == (8 if paired else 4)
  study = configlib.load_config(f"{CONFIG}:paper", {"paths.model": "/models/yi"})
  run = study.stages.ga_kl_in_lr0_ep1.run
  assert run.train.reference_from == "/models/yi" and run.train.init_from == "/models/yi"
  assert (run.optimizer.schedule, run.optimizer.warmup_ratio, run.optimizer.weight_decay, run.optimizer.lr) == (
      "hf_cosine", 0.03, 0.0, 2e-5)
  assert run.data.chunked.paired_source == "retain" and run.data.chunked.factor == -1.0


@pytest.mark.parametrize("scale", ["cpu", "gpu"], ids=["cpu_scale", "gpu_scale"])  # "gpu" alone marks a GPU test
def test_scales_resolve(scale):
  study = configlib.load_config(f"{CONFIG}:{scale}")
  arms = [n for n in study.stages if n not in ("data", "pretrain", "retrain", "evaluate", "report")]
  assert len(arms) == 7 * 3 * 2
  assert study.stages.evaluate.args.models.retrain == "{stage:retrain}"
