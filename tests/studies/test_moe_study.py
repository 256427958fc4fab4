"""The MoE study at smoke scale through the study runner."""

import json

from yijax import configlib
from yijax.studies import runner


def test_moe_study_smoke(tmp_path, prepared_data):
  study = configlib.load_config("experiments/moe/config.py:smoke")
  for arm in ("dense", "moe_aux", "moe_no_aux", "moe_aux_free"):
    configlib.apply_overrides(study, {f"stages.{arm}.run.data.prepared_dir": prepared_data,
                                      f"stages.{arm}.run.train.steps": 4})
  runner.run_study(study, str(tmp_path))
  results = json.load(open(tmp_path / "results.json"))
  assert set(results) == {"dense", "moe_aux", "moe_no_aux", "moe_aux_free"}
  assert len({r["tokens"] for r in results.values()}) == 1  # the same tokens for every arm
  assert "load_max_over_mean" not in results["dense"]
  assert all(len(results[arm]["load_max_over_mean"]) == 3 for arm in ("moe_aux", "moe_no_aux", "moe_aux_free"))
  assert (tmp_path / "report.md").read_text().count("|") > 20
