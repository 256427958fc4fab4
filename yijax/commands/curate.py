"""yijax curate --input=PATH_OR_GLOB[,...] --out=DIR [--config=configs/data/yi.py] [--config.x=v ...]"""

from __future__ import annotations

import os

from absl import flags

from yijax.commands import check_config_overrides, define_config
from yijax.errors import UsageError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "configs", "data", "yi.py")


def define_flags(fv, argv):
  if not any(a.startswith("--config=") for a in argv) and os.path.exists(DEFAULT_CONFIG):
    argv.insert(1, f"--config={DEFAULT_CONFIG}")
  define_config(fv, argv, help_string="curation config (default configs/data/yi.py); override fields with "
                "--config.a.b=v, e.g. --config.dedup.near.jaccard=0.8")
  flags.DEFINE_list("input", [], "text files (one document each), JSONL (one per line; `id` and `text` fields), "
                    "directories, globs, or tfds:DATASET[/CONFIG][:VERSION]:SPLIT; comma-separated, repeatable",
                    flag_values=fv)
  flags.DEFINE_string("out", None, "output directory: kept/, removed/<stage>/, report.{json,md}, PNGs (rerun the "
                      "same command to resume)", flag_values=fv)


def check_argv(argv):
  if not any(a.startswith("--config=") for a in argv) and os.path.exists(DEFAULT_CONFIG):
    argv.insert(1, f"--config={DEFAULT_CONFIG}")
  check_config_overrides(argv)


def run(fv, args):
  from yijax import paths
  from yijax.curate import pipeline

  if args:
    raise UsageError(f"unexpected arguments {args}; inputs go in --input=PATH_OR_GLOB[,...]")
  if not fv.input:
    raise UsageError("--input is required: text files, JSONL, globs, directories or tfds:DATASET:SPLIT")
  if not fv.out:
    raise UsageError("--out is required")
  if fv.config is None:
    raise UsageError("--config is required, e.g. --config=configs/data/yi.py")
  paths.check_output_dir(fv.out, "--out")
  report = pipeline.run(list(fv.input), fv.out, fv.config)
  if report is None:
    print(f"submitted to Slurm; the last job writes {os.path.join(fv.out, 'report.md')}")
    return 0
  width = max(len(s) for s in report["stages"])
  print(f"{'stage':<{width}} {'docs in':>10} {'docs out':>10} {'bytes out':>14}  status")
  for name, s in report["stages"].items():
    print(f"{name:<{width}} {s['documents_in']:>10,} {s['documents_out']:>10,} {s['bytes_out']:>14,}  {s['status']}")
  quality = report.get("dedup_quality")
  if quality:
    print(f"dedup vs planted truth: precision {quality['precision']:.4f}, recall {quality['recall']:.4f}")
  print(f"kept {report['documents_kept']:,} of {report['documents_in']:,} documents -> "
        f"{os.path.join(fv.out, 'kept')}; report: {os.path.join(fv.out, 'report.md')}")
  return 0
