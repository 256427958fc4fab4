"""yijax experiment --config=experiments/<study>/config.py:<scale> --workdir=DIR [--config.x=v] [--dry_run]"""

from __future__ import annotations

import json

from absl import flags

from yijax.cli import UsageError
from yijax.commands import check_config_overrides, define_config


def define_flags(fv, argv):
  define_config(fv, argv, help_string="study config, experiments/<study>/config.py:<scale>")
  flags.DEFINE_string("workdir", None, "study directory (rerun the same command to resume)", flag_values=fv)
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
  if fv.workdir and paths.is_url(fv.workdir):
    raise UsageError(f"--workdir={fv.workdir}: a study directory must be a local or mounted path (its stages "
                     "write reports, plots and evaluation logs with local file APIs); mount the bucket "
                     "(gcsfuse --implicit-dirs BUCKET /mnt/BUCKET) or use a local directory. Single runs "
                     "(`yijax train --workdir=gs://...`) take gs:// directly")
  if fv.dry_run:
    plan = runner.run_study(fv.config, fv.workdir or "DIR", dry_run=True)["plan"]
    for line in plan:
      print(json.dumps(line, default=str))
    return 0
  try:
    runner.run_study(fv.config, fv.workdir)
  except runner.StageFailed as e:
    print(f"yijax experiment: {e}")
    return 1
  if fv.results_dir:
    copied = runner.publish(fv.workdir, fv.results_dir)
    print(f"[study] results -> {fv.results_dir}: {', '.join(copied)}")
  return 0
