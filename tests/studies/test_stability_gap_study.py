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
  assert set(arms) == {"baseline", "hq_mixture", "no_shift", "freeze_top"}
  for arm, r in arms.items():
    assert r["evaluations"] >= 2 and r["tokens"] > 0  # dense evaluation at eval.steps, plus the end
    known = r["b_known_qa"]
    assert 0.0 <= known["start"] <= 1.0 and known["items"] == 4 * 6  # world B's known half: 6 people x 4
    assert r["domain_loss"]["final"]["mean"] < r["domain_loss"]["start"] + 0.5
  assert arms["baseline"]["domain_epochs"] > 0.3  # epochs counted in real tokens
  assert "update_ratio" in arms["baseline"]  # bottom / top relative update logged at each evaluation
  rows = [json.loads(line) for line in open(workdir / "hq_mixture" / "seed0" / "eval.jsonl")]
  assert all(k in rows[-1] for k in ("tasks/b_known_qa/acc", "tasks/b_unknown_qa/acc", "tasks/a_held_out_qa/acc",
                                     "loss/domain", "relative_update/all/0", "relative_update/bottom_over_top"))
  ids = {c["id"]: c for c in results["claims"]}
  assert {"baseline_b_known_qa_dip", "hq_mixture_b_known_qa_vs_baseline", "shift_moves_bottom_layers"} <= set(ids)
  assert all(c["verdict"] == "not resolved" for c in ids.values())  # one seed: nothing is resolved
  gate = results["gate"]  # recorded, not enforced at smoke scale: a 4-step model is at chance
  assert set(gate["checks"]) == {"a_trained_qa", "a_held_out_qa", "b_known_qa"} and not gate["passed"]
  assert "failed the gate" in open(workdir / "report.md").read()
  data = results["data"]
  assert data["corrupted_share_hq"] < data["corrupted_share_domain"]  # quality selection drops corrupted text
  assert data["tokens"]["train/domain_hq"] <= 0.4 * data["tokens"]["train/domain"] + 1
  assert 0 < data["hq_coverage"]["people_covered"] <= 1 and 0 < data["packing"]["domain"] <= 1
  capsys.readouterr()
  assert cli.main(["yijax", "experiment", CONFIG, f"--workdir={workdir}"]) == 0  # rerun: everything skipped
  assert "ran nothing" in capsys.readouterr().out


def test_stability_gap_paper_dry_run(capsys):
  assert cli.main(["yijax", "experiment", f"--config={ROOT}/experiments/stability_gap/config.py:paper",
                   "--dry_run"]) == 0
  plan = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
  steps = {p["stage"]: p.get("steps") for p in plan}
  assert steps["hq"] < 0.45 * steps["baseline"]  # the strategies read 40% of the tokens (10% x 4 epochs)
  assert all(p["model_params"] > 3e9 for p in plan if p["kind"] == "train")  # OpenLlama-3B-sized
