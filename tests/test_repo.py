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
