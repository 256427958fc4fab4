"""CI runs exactly the README's test command."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ci_runs_the_readme_test_command():
  readme = open(os.path.join(ROOT, "README.md")).read()
  command = re.search(r"pip install -e \"\.\[test\]\" && (python -m pytest[^\n`]*)", readme).group(1).strip()
  ci = [line.strip() for line in open(os.path.join(ROOT, ".ci", "run")) if line.strip() and not line.startswith("#")]
  assert ci[-1] == command
  assert "python -m pip install -q torch==2.13.0" in ci and ci.index("python -m pip install -q torch==2.13.0") < \
      ci.index('python -m pip install -q -e ".[test]"')


def test_dependency_direction_data_and_sharding_know_nothing_of_models():
  """DESIGN.md: `data` knows nothing of models, and `models`/`sharding` nothing of training; errors.py
  imports nothing, so every layer can raise the user errors."""
  import subprocess
  import sys

  code = ("import sys, yijax.errors, yijax.data.pipeline, yijax.data.prepare, yijax.data.chunked, "
          "yijax.data.tokenizer, yijax.sharding; "
          "print(sorted(m for m in sys.modules if m.startswith(('yijax.models', 'yijax.train'))))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"
  source = open(os.path.join(ROOT, "yijax", "errors.py")).read()
  assert "import " not in source.replace('"""', "").split("class YijaxError")[0]
