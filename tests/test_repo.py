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


def _sources():
  root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "yijax")
  for folder, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        yield os.path.relpath(path, os.path.dirname(root)), open(path).read()


def test_no_private_names_across_modules():
  # a module's _names are its own: another module that needs one gets a public name instead
  import ast

  root = os.path.dirname(os.path.dirname(__file__))
  is_module = lambda dotted: os.path.exists(os.path.join(root, *dotted.split(".")) + ".py") or os.path.isdir(
      os.path.join(root, *dotted.split(".")))
  found = []
  for rel, text in _sources():
    tree = ast.parse(text)
    modules = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("yijax"):
        for alias in node.names:
          if alias.name.startswith("_") and not alias.name.startswith("__"):
            found.append(f"{rel}: from {node.module} import {alias.name}")
          if is_module(f"{node.module}.{alias.name}"):
            modules.add(alias.asname or alias.name)
      elif isinstance(node, ast.Import):
        modules.update(a.asname for a in node.names if a.name.startswith("yijax") and a.asname)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
          and node.attr.startswith("_") and not node.attr.startswith("__")):
        found.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not found, found


def test_library_code_leaves_process_state_alone():
  # no global matplotlib backend switch or pyplot figure registry (plots go through the Figure API)
  found = [rel for rel, text in _sources() if "matplotlib.use(" in text or "import matplotlib.pyplot" in text]
  assert not found, found
  # no swapping of the process's streams: library output goes through the `yijax` logger's handlers
  swapped = [rel for rel, text in _sources() if re.search(r"^\s*sys\.(stdout|stderr)\s*(,\s*sys\.\w+\s*)?=", text, re.M)]
  assert not swapped, swapped


def test_no_import_cycles():
  """No two yijax modules import each other, directly or around a loop (function-level imports count)."""
  import ast

  modules = {}
  for rel, text in _sources():
    name = rel[:-3].replace(os.sep, ".")
    modules[name[:-len(".__init__")] if name.endswith(".__init__") else name] = text
  edges = {}
  for name, text in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("yijax"):
        targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names}
      elif isinstance(node, ast.Import):
        targets |= {a.name for a in node.names if a.name.startswith("yijax")}
    edges[name] = {t for t in targets if t in modules and t not in (name, "yijax")}

  def reaches(start):
    seen, todo = set(), list(edges[start])
    while todo:
      node = todo.pop()
      if node not in seen:
        seen.add(node)
        todo += edges[node]
    return seen

  cycles = sorted({tuple(sorted((a, b))) for a in edges for b in reaches(a) if a in reaches(b) and a != b})
  assert not cycles, cycles
