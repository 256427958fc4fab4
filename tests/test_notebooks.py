"""Every colab/*.ipynb is what colab/build_notebooks.py generates, and runs top to bottom headless
(nbclient, a python3 kernel, CPU, YIJAX_NOTEBOOK_SMALL=1: a few steps of a 2-layer model).

Every notebook executes in every CI run. A study notebook whose smoke study a study test checks in
detail is executed by that test (EXECUTED_ELSEWHERE), so the study runs once, not twice.
"""

import ast
import glob
import importlib.util
import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))
EXECUTED_ELSEWHERE = {"growth.ipynb": "tests/studies/test_growth_studies.py",
                      "checkpoint_dynamics.ipynb": "tests/studies/test_checkpoint_dynamics_study.py",
                      "stability_gap.ipynb": "tests/studies/test_stability_gap_study.py",
                      "unlearning.ipynb": "tests/unlearning/test_study.py"}


def _builder():
  spec = importlib.util.spec_from_file_location("build_notebooks", os.path.join(ROOT, "colab", "build_notebooks.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_notebooks_are_generated_and_stored_without_outputs():
  builder = _builder()
  assert sorted(os.path.join(ROOT, "colab", name) for name in builder.NOTEBOOKS) == NOTEBOOKS
  assert builder.main(["--check"]) == 0, "run python colab/build_notebooks.py"
  for path in NOTEBOOKS:
    notebook = nbformat.read(path, as_version=4)
    assert "colab.research.google.com" in notebook.cells[0].source
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in notebook.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if os.path.basename(p) not in EXECUTED_ELSEWHERE],
                         ids=os.path.basename)
def test_notebook_runs_headless(path, tmp_path, monkeypatch, prepared_data):
  from conftest import execute_notebook, notebook_images

  notebook = execute_notebook(path, tmp_path, monkeypatch, prepared_data)
  assert notebook_images(notebook) >= 1  # a loss curve or a study's plots
  if os.path.basename(path) == "quickstart.ipynb":
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "largest logit difference" in outputs or "skipped loading the export" in outputs
    assert os.path.isdir(tmp_path / "runs" / "colab-quickstart" / "checkpoints")


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if os.path.basename(p) != "quickstart.ipynb"],
                         ids=os.path.basename)
def test_study_notebook_code_parses_and_its_studies_plan(path, tmp_path):
  from yijax import cli

  notebook = nbformat.read(path, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      ast.parse(cell.source)
  source = "\n".join(c.source for c in notebook.cells)
  studies = ast.literal_eval(re.search(r"for study in (\[[^\]]*\])", source).group(1))
  assert studies
  for study in studies:
    config = os.path.join(ROOT, "experiments", study, "config.py")
    assert os.path.exists(config), config
    assert cli.main(["yijax", "experiment", f"--config={config}:smoke", f"--workdir={tmp_path / study}",
                     "--dry_run"]) == 0


def test_notebooks_executed_elsewhere_are_executed_there():
  for name, test_file in EXECUTED_ELSEWHERE.items():
    assert os.path.join(ROOT, "colab", name) in NOTEBOOKS
    source = open(os.path.join(ROOT, test_file)).read()
    assert f'"{name}"' in source and "execute_notebook(" in source, test_file
