"""yijax train --config=configs/pretrain/tiny.py --workdir=DIR [--config.a.b=v ...]"""

from __future__ import annotations

import numpy as np
from absl import flags

from yijax.cli import UsageError
from yijax.commands import check_config_overrides, define_config


def define_flags(fv, argv):
  define_config(fv, argv, presets="run")
  flags.DEFINE_string("workdir", None, "run directory (rerun the same command to resume)", flag_values=fv)


check_argv = check_config_overrides


def run(fv, args):
  from yijax import paths
  from yijax.train import loop

  if fv.config is None or not fv.workdir:
    raise UsageError("--config and --workdir are required, e.g. "
                     "yijax train --config=configs/pretrain/tiny.py --workdir=runs/tiny (or gs://BUCKET/runs/tiny)")
  try:
    paths.resolve(fv.workdir)  # an unsupported URL or a missing gcsfs fails here, before anything is built
  except paths.PathError as e:
    raise UsageError(str(e)) from None
  print(fv.config, flush=True)
  result = loop.train(fv.config, fv.workdir, evaluators=_extra_evaluators(fv.config))
  print(f"run dir: {fv.workdir}   (TensorBoard: tensorboard --logdir {fv.workdir}/tensorboard)")
  if result.get("preempted"):
    return 0
  shown = {k: v for k, v in result.items() if k in ("step", "loss", "tokens_seen") or k.startswith("eval/")}
  print("final: " + "  ".join(f"{k}={float(v):.4f}" if isinstance(v, (float, np.floating)) else f"{k}={v}"
                              for k, v in shown.items()))
  return 0


def _extra_evaluators(config):
  """Evaluators the run config asks for: eval.multiple_choice, eval.tasks, eval.source_losses."""
  from yijax.eval import dense

  return dense.evaluators_from_config(config)
