"""One module per `yijax` command: `define_flags(fv, argv)` and `run(fv, args)`."""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from yijax import configlib


def define_config(fv: flags.FlagValues, argv: list[str], name: str = "config", default=None,
                  help_string: str = "config file, FILE.py[:ARG]; override fields with --config.a.b=v",
                  presets: str | None = None) -> None:
  """presets: "model" or "run" to also accept a preset's name (yijax/config_presets.py) for --NAME."""
  if presets:
    from yijax import config_presets

    config_presets.resolve_argv(argv, name, presets)
    help_string += f" (or a preset's name: {', '.join(config_presets.names(presets))})"
  config_flags.DEFINE_config_file(name, default, help_string, flag_values=fv, lock_config=True, sys_argv=argv)


def check_config_overrides(argv: list[str], name: str = "config") -> None:
  """Names the closest keys for an unknown --config.x override before absl parses."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)
  if spec is None:
    return
  configlib.check_overrides(configlib.load_config_file(spec), [a for a in argv if a.startswith(f"--{name}.")])


def mesh_from_flag(text: str, flag: str = "--mesh"):
  """A mesh from AXIS:SIZE,... (e.g. fsdp:-1 or fsdp:4,tensor:2; -1 = the remaining devices); "" = None."""
  from yijax import sharding
  from yijax.cli import UsageError

  if not text.strip():
    return None
  shape = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    axis, _, size = part.partition(":")
    try:
      shape[axis] = int(size)
    except ValueError:
      raise UsageError(f"{flag}={text!r}: each entry is AXIS:SIZE, e.g. fsdp:-1 or fsdp:4,tensor:2") from None
  return sharding.make_mesh(shape)
