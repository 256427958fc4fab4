"""The stability-gap study at smoke scale through `yijax experiment`: every stage, dense evaluation, the report."""

import json
import os

from yijax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = f"--config={ROOT}/experiments/stability_gap/config.py:smoke"


def test_stability_gap_notebook_runs_the_smoke_study(tmp_path, monkeypatch, prepared_data, capsys):
  """colab/stability_gap.ipynb runs the smoke study (the notebook's CI execution); then it is checked."""
  from conftest import execute_notebook, notebook_images

  notebook = execute_notebook(os.path.join(ROOT, "colab", "stability_gap.ipynb"), tmp_path, monkeypatch,
                              prepared_data)
  assert notebook_images(notebook) >= 2
  workdir = tmp_path / "runs" / "colab-stability_gap-smoke"
  results = json.load(open(workdir / "results.json"))
  assert {"curves.png", "relative_update.png", "report.md"} <= set(os.listdir(workdir))
  arms = results["arms"]
  assert set(arms) == {"full_lr_hi", "hq_mixture_4ep", "replay10", "freeze_top"}
  for arm, r in arms.items():
    assert r["evaluations"] >= 2 and r["tokens"] > 0  # dense evaluation: every 2 of 4 steps, plus the end
    assert 0.0 <= r["domain_acc"]["start"] <= 1.0 and r["domain_acc"]["points"] == r["evaluations"] + 1
    assert r["domain_loss"]["final"] < r["domain_loss"]["start"] + 0.5
  assert "update_ratio" in arms["full_lr_hi"]  # bottom / top relative update logged at each evaluation
  rows = [json.loads(line) for line in open(workdir / "hq_mixture_4ep" / "eval.jsonl")]
  assert all(k in rows[-1] for k in ("tasks/domain_qa/acc", "tasks/general_qa/acc", "loss/domain",
                                     "relative_update/all/0", "relative_update/bottom_over_top"))
  data = results["data"]
  assert data["corrupted_share_hq"] < data["corrupted_share_domain"]  # quality selection drops corrupted text
  assert data["tokens"]["train/domain_hq"] <= 0.2 * data["tokens"]["train/domain"] + 1
  capsys.readouterr()
  assert cli.main(["yijax", "experiment", CONFIG, f"--workdir={workdir}"]) == 0  # rerun: everything skipped
  assert "ran nothing" in capsys.readouterr().out


def test_stability_gap_paper_dry_run(capsys):
  assert cli.main(["yijax", "experiment", f"--config={ROOT}/experiments/stability_gap/config.py:paper",
                   "--dry_run"]) == 0
  plan = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
  steps = {p["stage"]: p.get("steps") for p in plan}
  assert steps["hq_4ep"] < 0.45 * steps["full_lr_hi"]  # the strategies read 40% of the tokens
  assert all(p["model_params"] > 3e9 for p in plan if p["kind"] == "train")  # OpenLlama-3B-sized
