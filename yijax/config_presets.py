"""Config files for presets by name, so `--config=yi_6b` works from any directory (no repo checkout needed).

`yijax model-info --config=NAME` and `yijax train --config=NAME` accept, besides a file path, the name of a
model preset (yijax.models.presets: tiny, yi_6b, yi_9b, yi_34b, yi_1p25b, moe_tiny, ...). For `train` the
name is a run config: `tiny` is the tiny pretraining run (configs/pretrain/tiny.py, `yijax quickstart`),
any other preset the base run config around that model. The command line rewrites `--config=NAME[:ARG]`
into `--config=<this file>:<kind>/NAME`, so `--config.a.b=v` overrides work as with files.
"""

from __future__ import annotations

import os

KINDS = ("model", "run")


def names(kind: str) -> list[str]:
  from yijax.models import presets

  return sorted(presets.PRESETS)


def get_config(arg: str):
  from yijax.errors import ConfigError
  from yijax.models import presets
  from yijax.train import config as run_configs

  kind, _, name = (arg or "").partition("/")
  if kind not in KINDS or name not in presets.PRESETS:
    raise ConfigError(f"no {kind or 'model'} preset {name!r}; presets: {sorted(presets.PRESETS)}")
  if kind == "model":
    return presets.config_dict(name)
  return run_configs.tiny_pretrain_config() if name == "tiny" else run_configs.base_config(name)


def resolve_argv(argv: list[str], flag: str, kind: str) -> None:
  """Rewrites `--FLAG=NAME` in place to this file's preset NAME when NAME is not a file; leaves files alone."""
  prefix = f"--{flag}="
  for i, arg in enumerate(argv):
    if not arg.startswith(prefix):
      continue
    path = arg[len(prefix):].partition(":")[0]
    if os.path.exists(path) or path.endswith(".py"):
      return
    if path not in names(kind):
      from yijax.errors import ConfigError

      raise ConfigError(f"{prefix}{path}: no such config file, and no preset of that name; give a file "
                        f"(configs/...py) or a preset: {', '.join(names(kind))}")
    argv[i] = f"{prefix}{os.path.abspath(__file__)}:{kind}/{path}"
    return
