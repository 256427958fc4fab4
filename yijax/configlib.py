"""Loading ml_collections run configs outside absl (tests, the study runner).

The command line uses `ml_collections.config_flags` (`--config=FILE[:ARG]
--config.a.b=v`); `load_config` gives the same result from Python, and both
report an unknown override with the closest existing keys.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Iterable, Mapping

import ml_collections

from yijax.models.config import ConfigError, ModelConfig


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` -> the ConfigDict its get_config(arg) returns."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise ConfigError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"_yijax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} defines no get_config()")
  return module.get_config(arg) if arg else module.get_config()


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(all_keys(value, prefix + key + "."))
  return keys


def unknown_override_error(config: ml_collections.ConfigDict, dotted: str) -> ConfigError:
  close = difflib.get_close_matches(dotted, all_keys(config), n=3, cutoff=0.5)
  return ConfigError(
      f"unknown config field --config.{dotted}; closest existing keys: "
      + (", ".join(f"config.{k}" for k in close) if close else "none (see the config file)")
  )


def check_overrides(config: ml_collections.ConfigDict, argv: Iterable[str]) -> None:
  """Raises ConfigError for any `--config.x.y=...` that names no existing field."""
  known = set(all_keys(config))
  for arg in argv:
    if arg.startswith("--config."):
      dotted = arg[len("--config."):].split("=", 1)[0]
      if dotted not in known:
        raise unknown_override_error(config, dotted)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys ({"optimizer.lr": 1e-3}); strings are parsed as Python literals."""
  known = set(all_keys(config))
  for dotted, value in overrides.items():
    if dotted not in known:
      raise unknown_override_error(config, dotted)
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    if isinstance(value, str) and not isinstance(node[leaf], str):
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass
    with node.unlocked() if hasattr(node, "unlocked") else _null():
      node[leaf] = value
  return config


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  config = load_config_file(spec)
  return apply_overrides(config, overrides or {})


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The validated ModelConfig of a run config (its `model` section) or a model config."""
  section = config.model if "model" in config else config
  return ModelConfig.from_dict(section).validate()
