"""The MoE study at smoke scale through the study runner (two of its four arms: the others differ only in
router settings, which tests/models/test_moe.py and tests/train/test_loop.py cover)."""

import json

from yijax import configlib
from yijax.studies import runner

ARMS = ("dense", "moe_aux_free")


def test_moe_study_smoke(tmp_path, prepared_data):
  study = configlib.load_config("experiments/moe/config.py:smoke")
  assert set(study.stages) == {"dense", "moe_aux", "moe_no_aux", "moe_aux_free", "report"}
  with study.unlocked():
    for arm in ("moe_aux", "moe_no_aux"):
      del study.stages[arm]
    study.stages.report.depends_on = list(ARMS)
    study.stages.report.args.arms = list(ARMS)
  for arm in ARMS:
    configlib.apply_overrides(study, {f"stages.{arm}.run.data.prepared_dir": prepared_data,
                                      f"stages.{arm}.run.train.steps": 3})
  runner.run_study(study, str(tmp_path))
  results = json.load(open(tmp_path / "results.json"))
  assert set(results) == set(ARMS)
  assert len({r["tokens"] for r in results.values()}) == 1  # the same tokens for every arm
  assert "load_max_over_mean" not in results["dense"]
  assert len(results["moe_aux_free"]["load_max_over_mean"]) == 3  # one per MoE layer
  assert all(v >= 1.0 for v in results["moe_aux_free"]["load_max_over_mean"])
  assert (tmp_path / "report.md").read_text().count("|") > 10
