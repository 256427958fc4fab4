"""The unlearning study's report stage: results.json, report.md and forget_vs_general.png.

The tables, the success criterion and the plot are yijax/unlearning/report.py.
"""

from yijax.unlearning import report


def analyze(args, stage_dir, context) -> dict:
  return report.write_report(args, stage_dir, context)
