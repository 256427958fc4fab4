"""Every colab/*.ipynb is what colab/build_notebooks.py generates, and runs top to bottom headless
(nbclient, a python3 kernel, CPU, YIJAX_NOTEBOOK_SMALL=1: a few steps of a 2-layer model).

The quickstart and checkpoint-dynamics notebooks execute in every CI run. The other study notebooks run
the same smoke studies that tests/studies/ and tests/unlearning/ already run through `yijax experiment`,
so CI checks their code and their studies' plans (`--dry_run`), and executes them in full when
YIJAX_TEST_ALL_NOTEBOOKS=1 (to keep the suite within its time budget)."""

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
ALWAYS_EXECUTED = ("quickstart.ipynb", "checkpoint_dynamics.ipynb")


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_headless(path, tmp_path, monkeypatch, prepared_data):
  if os.path.basename(path) not in ALWAYS_EXECUTED and os.environ.get("YIJAX_TEST_ALL_NOTEBOOKS") != "1":
    pytest.skip("its study's smoke scale is tested under tests/; YIJAX_TEST_ALL_NOTEBOOKS=1 executes it too")
  monkeypatch.setenv("YIJAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("YIJAX_NOTEBOOK_DATA", prepared_data)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")  # a Colab CPU runtime
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
  if os.path.basename(path) == "quickstart.ipynb":
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "largest logit difference" in outputs or "skipped loading the export" in outputs
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in notebook.cells if c.cell_type == "code" for o in c.outputs)  # the loss plot
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
