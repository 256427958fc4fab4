"""yijax experiment --config=experiments/<study>/config.py:<scale> --workdir=DIR [--config.x=v] [--dry_run]"""

from __future__ import annotations

import json

from absl import flags

from yijax.cli import UsageError
from yijax.commands import check_config_overrides, define_config


def define_flags(fv, argv):
  define_config(fv, argv, help_string="study config, experiments/<study>/config.py:<scale>")
  flags.DEFINE_string("workdir", None, "study directory, local or gs://BUCKET/PATH (rerun the same command to "
                      "resume)", flag_values=fv)
  flags.DEFINE_boolean("dry_run", False, "print the resolved plan (stages, model sizes, token budgets); run nothing",
                       flag_values=fv)
  flags.DEFINE_string("results_dir", None, "when the study finishes, copy results.json, report.md, run.json and "
                      "the PNGs here (e.g. experiments/moe/results/cpu, to commit)", flag_values=fv)


check_argv = check_config_overrides


def run(fv, args):
  from yijax import paths
  from yijax.studies import runner

  if fv.config is None or (not fv.workdir and not fv.dry_run):
    raise UsageError("--config and --workdir are required, e.g. yijax experiment "
                     "--config=experiments/moe/config.py:smoke --workdir=runs/moe_smoke")
  workdir = paths.resolve(fv.workdir) if fv.workdir else None  # an unsupported URL or a missing gcsfs fails here
  results_dir = paths.resolve(fv.results_dir, "--results_dir") if fv.results_dir else None
  if fv.dry_run:
    plan = runner.run_study(fv.config, workdir or "DIR", dry_run=True)["plan"]
    for line in plan:
      print(json.dumps(line, default=str))
    return 0
  try:
    runner.run_study(fv.config, workdir)
  except runner.StageFailed as e:
    print(f"yijax experiment: {e}")
    return 1
  if results_dir:
    copied = runner.publish(workdir, results_dir)
    print(f"[study] results -> {results_dir}: {', '.join(copied)}")
  return 0
