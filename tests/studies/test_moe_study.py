"""The MoE study at smoke scale through the study runner, with two paired seeds (two of its four arms: the
others differ only in router settings, which tests/models/test_moe.py and tests/train/test_loop.py cover).
Run twice in fresh work dirs it gives identical results.json."""

import json

from yijax import configlib
from yijax.studies import runner

ARMS = ("dense", "moe_aux_free")


def _study(prepared_data):
  study = configlib.load_config("experiments/moe/config.py:smoke", {"study.seeds": 2, "study.steps": 3})
  assert set(study.stages) == {"dense", "moe_aux", "moe_no_aux", "moe_aux_free", "report"}
  assert study.stages.dense.run.train.steps == 3  # the knob reaches every arm
  with study.unlocked():
    for arm in ("moe_aux", "moe_no_aux"):
      del study.stages[arm]
    study.stages.report.depends_on = list(ARMS)
    study.stages.report.args.arms = list(ARMS)
  for arm in ARMS:
    configlib.apply_overrides(study, {f"stages.{arm}.run.data.prepared_dir": prepared_data})
  return study


def test_moe_study_smoke_two_seeds_reproducible(tmp_path, prepared_data):
  runs = []
  for attempt in ("a", "b"):
    workdir = tmp_path / attempt
    runner.run_study(_study(prepared_data), str(workdir))
    runs.append((workdir / "results.json").read_text())
  assert runs[0] == runs[1]
  results = json.loads(runs[0])
  assert set(results["arms"]) == set(ARMS) and results["seeds"] == 2
  dense, moe = results["arms"]["dense"], results["arms"]["moe_aux_free"]
  assert dense["tokens"]["values"] == moe["tokens"]["values"]  # paired: seed i of each arm sees the same data
  assert dense["eval_loss"]["values"][0] != dense["eval_loss"]["values"][1]  # the seeds differ
  assert "load_max_over_mean" not in dense and len(moe["load_max_over_mean"]["values"]) == 2
  assert all(v >= 1.0 for v in moe["load_max_over_mean_layer2"]["values"])  # one entry per MoE layer
  claim = next(c for c in results["claims"] if c["id"] == "moe_aux_free_below_dense")
  assert claim["n_seeds"] == 2 and claim["verdict"] in ("holds", "refuted", "not resolved")
  assert claim["diff"] == moe["eval_loss"]["mean"] - dense["eval_loss"]["mean"] or abs(
      claim["diff"] - (moe["eval_loss"]["mean"] - dense["eval_loss"]["mean"])) < 1e-12
  report = (tmp_path / "a" / "report.md").read_text()
  assert "`moe_aux_free_below_dense`" in report and report.count("|") > 20
  record = json.loads((tmp_path / "a" / "run.json").read_text())
  assert set(record["wall_seconds_by_stage"]) == {"dense/seed0", "dense/seed1", "moe_aux_free/seed0",
                                                  "moe_aux_free/seed1", "report"}
  published = runner.publish(str(tmp_path / "a"), str(tmp_path / "published"))
  assert set(published) >= {"results.json", "report.md", "run.json", "eval_loss_by_seed.png"}
  assert (tmp_path / "published" / "results.json").read_text() == runs[0]
