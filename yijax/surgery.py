"""Growing a dense model in depth: layer surgery on parameter pytrees.

A grown model is an index list over the source's layers: its layer i is a
copy of source layer `order[i]`, a gather along the stacked `layers` axis
(embedding, final norm and LM head are copied unchanged, nothing is rescaled).

  stack_order(6, 4)            G_stack (Du et al. 2024): [0..5] four times, 24 layers
  interpolation_order(6, 4)    [0,0,0,0,1,1,1,1,...]: each layer repeated in place
  block_order(32, 12, 28)      Yi-9B: [0..27] + [12..27] + [28..31], 48 layers
  block_order(32, 8, 24)       SOLAR-10.7B: [0..23] + [8..31] (the middle 16 layers twice)

The first occurrence of an index is the original layer; every later one is a
new layer, which `new_layers` fills by copying ("copy"), as an identity block
("zero": a copy with its attention and MLP output projections zeroed, so the
grown model computes exactly the source's function and gradients still
reach the zeroed projections; a layer zeroed entirely would get no gradient
and stay the identity forever), or freshly initialized ("random"): the
paper's G_direct, G_zero and G_random controls.

`layer_cosine` measures how much each layer changes its input (the quantity
Yi used to pick the block to duplicate), `select_block` applies that rule, and
`growth_tokens` is the paper's fit for when to grow.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from yijax import paths
from yijax.errors import PathError
from yijax.models.config import ConfigError, ModelConfig

NEW_LAYERS = ("copy", "zero", "random")
BLOCK_POLICIES = ("max_cosine", "min_cosine", "middle")
# the residual-branch outputs of a block: zeroed, they make the block the identity
OUTPUT_PROJECTIONS = (("attention", "o_proj", "kernel"), ("mlp", "down_proj", "kernel"))
SURGERY_FILE = "surgery.json"


# ----------------------------------------------------------------------------- orders


def stack_order(num_layers: int, times: int) -> list[int]:
  """G_stack: the whole model `times` times in depth, [0..L-1] repeated."""
  _positive(num_layers, "num_layers")
  _positive(times, "times")
  return list(range(num_layers)) * times


def interpolation_order(num_layers: int, times: int) -> list[int]:
  """Each layer repeated `times` times in place: [0,0,1,1,...] for times=2."""
  _positive(num_layers, "num_layers")
  _positive(times, "times")
  return [i for i in range(num_layers) for _ in range(times)]


def block_order(num_layers: int, start: int, end: int) -> list[int]:
  """Layers [start, end) duplicated, the copies right after the originals (Yi-9B, SOLAR)."""
  if not 0 <= start < end <= num_layers:
    raise ConfigError(f"block {start}:{end} must satisfy 0 <= start < end <= num_layers={num_layers}")
  return list(range(end)) + list(range(start, end)) + list(range(end, num_layers))


def check_order(order: Sequence[int], num_layers: int) -> tuple[int, ...]:
  order = tuple(int(i) for i in order)
  if not order:
    raise ConfigError("the layer order is empty; give at least one source layer index")
  bad = [i for i in order if not 0 <= i < num_layers]
  if bad:
    raise ConfigError(f"layer order names layers {bad[:5]} but the source has {num_layers} (0..{num_layers - 1})")
  return order


def new_layer_mask(order: Sequence[int]) -> np.ndarray:
  """True where `order` repeats an index seen before: the new layers (the first copy is the original)."""
  seen: set[int] = set()
  mask = []
  for i in order:
    mask.append(i in seen)
    seen.add(i)
  return np.asarray(mask, bool)


# ----------------------------------------------------------------------------- the gather


def _dense_stack(config: ModelConfig):
  """The single scanned stack of a dense model with one layer kind, or a ConfigError."""
  from yijax.models.transformer import DecoderBlock, layer_stacks

  stacks = layer_stacks(config)
  if len(stacks) != 1 or stacks[0][0] != "layers" or stacks[0][1] is not DecoderBlock:
    raise ConfigError(
        f"depth surgery needs a dense model whose layers are all alike (one scanned `layers` stack); this one "
        f"has stacks {[s[0] for s in stacks]} (model.num_experts={config.num_experts}, "
        f"model.attention_pattern={config.attention_pattern!r}, model.kv_share_group={config.kv_share_group}). "
        "Grow the dense model first, or set the MoE / hybrid fields after growth")
  return stacks[0]


def grown_config(config: ModelConfig, order: Sequence[int]) -> ModelConfig:
  """The source config with len(order) layers (checked: dense, indices in range)."""
  _dense_stack(config)
  return config.replace(num_layers=len(check_order(order, config.num_layers))).validate()


def _path_is(path, suffix: tuple[str, ...]) -> bool:
  keys = tuple(str(getattr(k, "key", k)) for k in path)
  return keys[-len(suffix):] == suffix


def duplicate_layers(params: Any, order: Sequence[int], *, new_layers: str = "copy", config: ModelConfig | None = None,
                     rng: jax.Array | None = None, mesh=None, rules=None) -> Any:
  """The grown parameters: layer i = source layer order[i]; other parameters copied.

  new_layers: "copy" | "zero" | "random" (module docstring). "random" needs
  `config` (the source's) and `rng`. With a `mesh` (and the source's
  `config`), the gather runs under jit with the grown model's shardings as
  out_shardings, so sharded parameters are never gathered on one host.
  """
  if new_layers not in NEW_LAYERS:
    raise ConfigError(f"new_layers={new_layers!r} is not one of {NEW_LAYERS}")
  num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
  order = check_order(order, num_layers)
  if (mesh is not None or new_layers == "random") and config is None:
    raise ConfigError(f"duplicate_layers with {'a mesh' if mesh is not None else 'new_layers=random'} needs "
                      "config= (the source model's ModelConfig)")
  new_config = grown_config(config, order) if config is not None else None
  mask = new_layer_mask(order)
  fresh = None
  if new_layers == "random":
    if rng is None:
      raise ConfigError("new_layers='random' needs rng= (a jax.random key)")
    from yijax import models

    fresh = models.init_params(new_config, rng, mesh=mesh, rules=rules)["layers"]

  def grow(params, fresh):
    index = jnp.asarray(order, jnp.int32)
    layers = jax.tree.map(lambda a: jnp.take(a, index, axis=0), params["layers"])

    def fill(path, leaf, new_leaf=None):
      is_new = jnp.asarray(mask).reshape((-1,) + (1,) * (leaf.ndim - 1))
      if new_layers == "zero" and any(_path_is(path, p) for p in OUTPUT_PROJECTIONS):
        return jnp.where(is_new, jnp.zeros_like(leaf), leaf)
      if new_layers == "random":
        return jnp.where(is_new, new_leaf.astype(leaf.dtype), leaf)
      return leaf

    if fresh is None:
      layers = jax.tree_util.tree_map_with_path(fill, layers)
    else:
      layers = jax.tree_util.tree_map_with_path(fill, layers, fresh)
    return {**params, "layers": layers}

  if mesh is None:
    return jax.jit(grow)(params, fresh)
  from yijax import models

  shardings = models.param_shardings(new_config, mesh, rules)
  return jax.jit(grow, out_shardings=shardings)(params, fresh)


# ----------------------------------------------------------------------------- layer cosine


def select_block(per_layer: Sequence[float], size: int, policy: str = "max_cosine", exclude_first: int = 1,
                 exclude_last: int = 2) -> tuple[int, int]:
  """(start, end) of the contiguous block of `size` layers to duplicate, inside
  [exclude_first, L - exclude_last): the highest mean cosine (Yi's rule: the
  layers that change their input least), the lowest, or the middle block (SOLAR)."""
  if policy not in BLOCK_POLICIES:
    raise ConfigError(f"block policy {policy!r} is not one of {BLOCK_POLICIES}")
  num_layers = len(per_layer)
  lo, hi = exclude_first, num_layers - exclude_last
  if size <= 0 or hi - lo < size:
    raise ConfigError(f"a block of {size} layers does not fit in layers {lo}..{hi - 1} of {num_layers} "
                      f"(first {exclude_first} and last {exclude_last} excluded); choose a smaller block")
  if policy == "middle":
    start = (num_layers - size) // 2
    return start, start + size
  means = {s: float(np.mean(per_layer[s:s + size])) for s in range(lo, hi - size + 1)}
  pick = max if policy == "max_cosine" else min
  start = pick(means, key=lambda s: (means[s], -s))
  return start, start + size


# ----------------------------------------------------------------------------- growth timing


def growth_tokens(num_params: float, num_tokens: float) -> float:
  """Du et al. (2024)'s growth timing for G_stack: the tokens d to train the small model,
  log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74, C = 6 N D
  (N: the target's parameters, D: its total tokens).

  Valid where it was fitted: targets of about 410M to 7B parameters trained on
  up to a few hundred billion tokens (7B on 300B: d = 20.5B). At compute-optimal
  budgets (D = 20 N) it returns d > D below about 1B parameters (grow after the
  run has ended): it says nothing about smaller models.
  """
  _positive(num_params, "num_params")
  _positive(num_tokens, "num_tokens")
  compute = 6.0 * num_params * num_tokens
  return 10 ** (0.88 * math.log10(num_params) + 163.27 / math.log10(compute) - 5.74)


# ----------------------------------------------------------------------------- model directories


def grow_model_dir(source: str, out: str, order: Sequence[int], new_layers: str = "copy", seed: int = 0,
                   mesh=None, overwrite: bool = False) -> dict:
  """Reads a model / checkpoint / run dir, writes the grown model dir at `out`; returns its summary.

  `out` holds model_config.json + params/ (what `train.init_from` reads), the
  source's tokenizer, a copy of the source checkpoint's data-iterator state
  (data/, for `train.init_data_state_from`) when it has one, and surgery.json.
  Written into a temporary sibling and renamed, so a failure leaves nothing.
  """
  from yijax import models
  from yijax.train import params_io

  from yijax.convert.common import check_replaceable

  out = os.path.abspath(out)
  paths.check_output_dir(out)
  if os.path.exists(out) and os.listdir(out):
    if not overwrite:
      raise PathError(f"--out={out} exists and is not empty; choose a new --out or pass --overwrite")
    check_replaceable(out)
  location = params_io.locate_model(source)
  config = params_io.read_model_config(source)
  new_config = grown_config(config, order)
  shardings = models.param_shardings(config, mesh) if mesh is not None else None
  _, params = params_io.load_model(source, shardings=shardings)
  grown = duplicate_layers(params, order, new_layers=new_layers, config=config, rng=jax.random.key(seed), mesh=mesh)
  tmp = out + ".surgery-tmp"
  primary = jax.process_index() == 0  # every process saves its shards; one moves files
  if primary:
    shutil.rmtree(tmp, ignore_errors=True)
  params_io.save_model(tmp, grown, new_config)
  step_dir = paths.parent(location.params_dir)
  has_data = paths.isdir(paths.join(step_dir, "data"))
  summary = {
      "source": step_dir, "order": list(check_order(order, config.num_layers)), "new_layers": new_layers,
      "seed": seed, "source_layers": config.num_layers, "layers": new_config.num_layers,
      "source_params": models.param_count(config)["total"], "params": models.param_count(new_config)["total"],
      "data_state": has_data,
  }
  if not primary:
    return summary
  if location.tokenizer:
    paths.copy_file(location.tokenizer, os.path.join(tmp, params_io.TOKENIZER))
  if has_data:
    paths.copy_tree(paths.join(step_dir, "data"), os.path.join(tmp, "data"))
  with open(os.path.join(tmp, SURGERY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  paths.user_mode_tree(tmp)
  if os.path.exists(out):
    shutil.rmtree(out)
  os.replace(tmp, out)
  return summary


def _positive(value, name: str) -> None:
  if not value > 0:
    raise ConfigError(f"{name}={value} must be positive")
