"""Study READMEs cannot drift from their committed results.

Under any heading that says "Results" (and names its scale: smoke, cpu, gpu or paper), every table row is
copied from experiments/<study>/results/<scale>/report.md and every number in it appears in that
directory's results.json (after rounding to the printed digits). Every claim a README cites, written
"claim `ID`: VERDICT", exists in the study's committed results with that verdict.
"""

import glob
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "experiments/*/README.md")))
NUMBER = re.compile(r"(?<![\w.`/-])-?\d+(?:\.\d+)?(?![\w.`/])")
CITATION = re.compile(r"claim `([^`]+)`(?::\s*(holds|refuted|not resolved))?")


def results_sections(text: str) -> list[tuple[str, list[str]]]:
  """(heading, lines) of every section whose heading says Results."""
  sections, current = [], None
  for line in text.splitlines():
    match = re.match(r"(#+)\s+(.*)", line)
    if match:
      level = len(match.group(1))
      if current and level <= current[0]:
        sections.append(current[1:])
        current = None
      if current is None and "results" in match.group(2).lower():
        current = (level, match.group(2), [])
      continue
    if current:
      current[2].append(line)
  if current:
    sections.append(current[1:])
  return sections


def numeric_leaves(value) -> list[float]:
  if isinstance(value, bool) or value is None:
    return []
  if isinstance(value, (int, float)):
    return [float(value)]
  if isinstance(value, dict):
    return [v for item in value.values() for v in numeric_leaves(item)]
  if isinstance(value, list):
    return [v for item in value for v in numeric_leaves(item)]
  return []


def printed_numbers(row: str) -> list[str]:
  return NUMBER.findall(row.replace("±", " "))


def appears(printed: str, leaves: list[float]) -> bool:
  digits = len(printed.split(".")[1]) if "." in printed else 0
  value = float(printed)
  return any(abs(leaf - value) <= 0.5 * 10**-digits + 1e-9 for leaf in leaves)


def test_number_matching_rounds_to_the_printed_digits():
  leaves = [4.44712, -0.00583, 20.0, 1.5149]
  assert appears("4.447", leaves) and appears("-0.0058", leaves) and appears("20", leaves) and appears("1.51", leaves)
  assert not appears("4.448", leaves) and not appears("1.52", leaves) and not appears("21", leaves)
  assert printed_numbers("| moe_aux | 4.447 ± 0.012 | yi_1p25b | seed0 | 1.51, 1.56 |") == ["4.447", "0.012", "1.51",
                                                                                                "1.56"]


@pytest.mark.parametrize("study", STUDIES)
def test_results_tables_come_from_committed_results(study):
  text = open(os.path.join(ROOT, "experiments", study, "README.md")).read()
  for heading, lines in results_sections(text):
    scales = re.findall(r"\b(smoke|cpu|gpu|paper)\b", heading)
    assert scales, f"experiments/{study}/README.md: the heading {heading!r} must name its scale"
    directory = os.path.join(ROOT, "experiments", study, "results", scales[0])
    for name in ("results.json", "report.md", "run.json"):
      assert os.path.exists(os.path.join(directory, name)), f"{heading!r}: {directory}/{name} is not committed"
    report = open(os.path.join(directory, "report.md")).read().splitlines()
    leaves = numeric_leaves(json.load(open(os.path.join(directory, "results.json"))))
    rows = [line for line in lines if line.startswith("|")]
    assert rows, f"experiments/{study}/README.md: {heading!r} has no table"
    for row in rows:
      assert row in report, f"experiments/{study}/README.md: {row!r} is not a row of {directory}/report.md"
      for number in printed_numbers(row):
        assert appears(number, leaves), f"experiments/{study}/README.md: {number} in {row!r} is not in results.json"


def all_claims(value) -> list[dict]:
  """Every claim of a results.json: its "claims" list and those of nested sections (a study's settings)."""
  out = []
  if isinstance(value, dict):
    for key, item in value.items():
      if key == "claims" and isinstance(item, list):
        out += [c for c in item if isinstance(c, dict) and "id" in c]
      else:
        out += all_claims(item)
  elif isinstance(value, list):
    for item in value:
      out += all_claims(item)
  return out


@pytest.mark.parametrize("study", STUDIES)
def test_cited_claims_exist_with_their_verdicts(study):
  text = open(os.path.join(ROOT, "experiments", study, "README.md")).read()
  claims = {}
  for path in glob.glob(os.path.join(ROOT, "experiments", study, "results", "*", "results.json")):
    found = all_claims(json.load(open(path)))
    ids = [c["id"] for c in found]
    assert len(ids) == len(set(ids)), f"{path}: claim ids repeat: {sorted(i for i in set(ids) if ids.count(i) > 1)}"
    claims.update({c["id"]: c["verdict"] for c in found})
  for claim_id, verdict in CITATION.findall(text):
    assert claim_id in claims, f"experiments/{study}/README.md cites claim {claim_id!r}, not in its results"
    assert verdict, f"experiments/{study}/README.md: cite claim `{claim_id}` as \"claim `{claim_id}`: VERDICT\""
    assert verdict == claims[claim_id], (f"experiments/{study}/README.md says claim {claim_id!r} {verdict}; "
                                         f"its results say {claims[claim_id]}")


def test_committed_results_are_complete():
  for directory in glob.glob(os.path.join(ROOT, "experiments/*/results/*")):
    names = set(os.listdir(directory))
    assert {"results.json", "report.md", "run.json"} <= names, f"{directory} lacks {names}"
    record = json.load(open(os.path.join(directory, "run.json")))
    assert record["command"].startswith("yijax experiment") and record["commit"] and record["machine"]
    results = json.load(open(os.path.join(directory, "results.json")))
    for claim in all_claims(results):
      assert {"id", "statement", "metric", "a", "b", "diff", "se", "n_seeds", "verdict"} <= set(claim)
