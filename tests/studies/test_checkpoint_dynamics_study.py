"""The checkpoint-dynamics study: its smoke scale through colab/checkpoint_dynamics.ipynb (the notebook's CI
execution), the records of every (size, checkpoint, task), the analysis outputs, and the paper plan."""

import json
import os

import numpy as np
import pytest

from yijax import cli
from yijax.eval import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = {"bpb_docs", "bpb_code", "cloze_docs", "cloze_code", "arith", "induction", "facts"}


def test_checkpoint_dynamics_notebook_runs_the_smoke_study(tmp_path, monkeypatch, prepared_data):
  from conftest import execute_notebook, notebook_images

  notebook = execute_notebook(os.path.join(ROOT, "colab", "checkpoint_dynamics.ipynb"), tmp_path, monkeypatch,
                              prepared_data)
  workdir = tmp_path / "runs" / "colab-checkpoint_dynamics-smoke"
  assert notebook_images(notebook) == 5
  assert {"curves_tokens.png", "curves_flops.png", "distances.png", "normalized.png", "loss_vs_downstream.png",
          "report.md", "results.json"} <= set(os.listdir(workdir))
  # the data stage copied the prepared corpus and added the battery's teaching text; the fixture is untouched
  manifest = json.load(open(workdir / "data" / "prepared" / "manifest.json"))
  assert {"facts", "arith", "python_code", "python_docs"} <= set(manifest["splits"]["train"])
  assert not os.path.exists(os.path.join(prepared_data, "train", "facts"))
  # every size: the same log-spaced checkpoints, every task scored at each, tokens and FLOPs rising with step
  steps_by_size = {}
  for size in ("xs", "s", "m"):
    records = checkpoints.load_results(str(workdir / f"eval_{size}" / checkpoints.RESULTS))
    steps = sorted({r["step"] for r in records})
    assert len(steps) >= 3 and steps[-1] == 8 and steps[0] == 1  # dense early: step 1 is kept
    assert {(r["step"], r["task"]) for r in records} == {(s, t) for s in steps for t in TASKS}
    flops = [next(r["flops"] for r in records if r["step"] == s) for s in steps]
    assert all(b > a > 0 for a, b in zip(flops, flops[1:]))
    steps_by_size[size] = steps
  assert len({tuple(s) for s in steps_by_size.values()}) == 1
  results = json.load(open(workdir / "results.json"))
  assert list(results["sizes"]) == ["xs", "s", "m"]  # ordered by parameters
  params = [results["sizes"][s]["params"] for s in ("xs", "s", "m")]
  assert params == sorted(params) and params[0] > 0
  flops_final = [results["sizes"][s]["flops"] for s in ("xs", "s", "m")]
  assert flops_final == sorted(flops_final)  # same tokens, larger models cost more
  matrix = np.array(results["distance_matrix"]["matrix"], dtype=float)
  # a curve that moved has distance 0 to itself; one that did not move has no shape (nan row)
  assert matrix.shape == (7, 7) and np.allclose(np.diag(matrix)[~np.isnan(np.diag(matrix))], 0.0)
  moved = 7 - len(results["distances"]["m"]["static"])
  assert results["distances"]["m"]["pairs_within"] + results["distances"]["m"]["pairs_across"] == moved * (moved - 1) // 2
  assert results["task_info"]["arith"] == {"chance": 0.375, "num_items": 16}  # the smoke battery's size
  for entries in results["decoupling"].values():  # 5 downstream tasks against the loss
    assert len(entries) == 5
    assert all(d["steps_disagreeing"] <= d["steps_resolved"] <= d["steps"] for d in entries.values())
  assert set(results["timing"]["m"]) == set(results["across_sizes"]) and "leave chance" in open(
      workdir / "report.md").read()


def test_paper_plan_and_missing_checkpoints(tmp_path, capsys):
  config = f"--config={ROOT}/experiments/checkpoint_dynamics/config.py:paper"
  bench = tmp_path / "arc.jsonl"
  bench.write_text(json.dumps({"context": "Q?", "choices": ["a", "b"], "answer": 0}) + "\n")
  assert cli.main(["yijax", "experiment", config, f"--workdir={tmp_path / 'plan'}", "--dry_run",
                   f"--config.paths.checkpoints={tmp_path / 'released'}", f"--config.paths.benchmarks={bench}"]) == 0
  plan = {p["stage"]: p for p in map(json.loads, capsys.readouterr().out.splitlines())}
  assert plan["eval_released"]["args"]["run"] == str(tmp_path / "released")
  assert plan["eval_released"]["args"]["extra_tasks"] == str(bench)
  # run for real without the checkpoints: the stage fails naming the flag, nothing else is touched
  assert cli.main(["yijax", "experiment", config, f"--workdir={tmp_path / 'run'}",
                   f"--config.paths.checkpoints={tmp_path / 'released'}"]) == 1
  assert "--config.paths.checkpoints" in capsys.readouterr().err
  with pytest.raises(ValueError):
    from yijax import configlib

    configlib.load_config(f"{ROOT}/experiments/checkpoint_dynamics/config.py:huge")
