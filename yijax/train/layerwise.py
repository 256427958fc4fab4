"""Per-layer views of the scanned parameters: freezing layers by index, and the
relative update ||W_t - W_0|| / ||W_0|| of each layer (Guo et al.'s stability-gap probe).

Layers live in scanned stacks (`transformer.layer_stacks`): a parameter under
stack S has a leading axis over S's scan steps, and inside a PeriodBlock under
`block_j`. `layer_index` maps global layer numbers onto (stack, step, block).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from yijax.models.config import ConfigError, ModelConfig
from yijax.models.transformer import DecoderBlock, layer_stacks

GROUPS = ("attention", "mlp", "norm")


def layer_index(config: ModelConfig) -> dict[tuple[str, int, str | None], int]:
  """(stack name, scan step, block name or None) -> global layer number."""
  out, layer = {}, 0
  for name, block, _, length, step_specs in layer_stacks(config):
    for step in range(length):
      if block is DecoderBlock:
        out[name, step, None] = layer
        layer += 1
      else:
        for j in range(len(step_specs)):
          out[name, step, f"block_{j}"] = layer
          layer += 1
  return out


def _where(path) -> tuple[str | None, str | None, str]:
  keys = [str(getattr(k, "key", k)) for k in path]
  block = keys[1] if len(keys) > 1 and keys[1].startswith("block_") else None
  return keys[0], block, "/".join(keys)


def freeze_mask(config: ModelConfig, params, frozen_layers) -> object:
  """0/1 multipliers for the updates: 0 on the given layers, 1 everywhere else.

  Negative indices count from the top, as in Python: [-5, -4, -3, -2, -1] freezes the top five layers.
  """
  bad = [int(i) for i in frozen_layers if not -config.num_layers <= int(i) < config.num_layers]
  if bad:
    raise ConfigError(f"optimizer.freeze_layers names layers {bad} outside [-{config.num_layers}, "
                      f"model.num_layers={config.num_layers}); negative indices count from the top")
  frozen = {int(i) % config.num_layers for i in frozen_layers}
  index = layer_index(config)
  stacks = {name for name, *_ in layer_stacks(config)}

  def mask(path, leaf):
    stack, block, _ = _where(path)
    if stack not in stacks:
      return jnp.ones((), jnp.float32)
    steps = leaf.shape[0]
    keep = np.array([0.0 if index[stack, s, block] in frozen else 1.0 for s in range(steps)], np.float32)
    return jnp.asarray(keep.reshape((steps,) + (1,) * (len(leaf.shape) - 1)))

  return jax.tree_util.tree_map_with_path(mask, params)


def _group(path_text: str) -> str:
  parts = path_text.split("/")
  if any(p.endswith("norm") for p in parts):
    return "norm"
  return "attention" if "attention" in parts else "mlp"


@functools.lru_cache(maxsize=8)
def _squared_sums_fn(mesh):
  """jitted (params, initial) -> per leaf ([steps] sum (W - W0)^2, [steps] sum W0^2), summed over all but the
  leading scan axis on the parameters' devices; replicated, so every process reads them."""

  def sums(params, initial):
    def one(now, before):
      now, before = now.astype(jnp.float32), before.astype(jnp.float32)
      axes = tuple(range(1, now.ndim))
      return jnp.sum(jnp.square(now - before), axis=axes), jnp.sum(jnp.square(before), axis=axes)

    return jax.tree.map(one, params, initial)

  if mesh is None:
    return jax.jit(sums)
  return jax.jit(sums, out_shardings=NamedSharding(mesh, PartitionSpec()))


def relative_update(config: ModelConfig, params, initial, k: int = 5) -> dict[str, float]:
  """Per layer and group ||W - W0|| / ||W0||, plus the bottom-k / top-k ratio of the layer totals. The sums
  run where the parameters are (sharded ones stay sharded); only [layers] vectors come to the host."""
  index = layer_index(config)
  stacks = [name for name, *_ in layer_stacks(config)]
  leaf = jax.tree.leaves(params)[0]
  mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
  sums = jax.device_get(_squared_sums_fn(mesh if isinstance(mesh, Mesh) else None)(
      {s: params[s] for s in stacks}, {s: initial[s] for s in stacks}))
  diff_sq: dict[tuple[int, str], float] = {}
  base_sq: dict[tuple[int, str], float] = {}
  for path, (d, b) in jax.tree_util.tree_flatten_with_path(sums, is_leaf=lambda x: isinstance(x, tuple))[0]:
    stack, block, text = _where(path)
    group = _group(text)
    for step in range(d.shape[0]):
      layer = index[stack, step, block]
      for g in (group, "all"):
        diff_sq[layer, g] = diff_sq.get((layer, g), 0.0) + float(d[step])
        base_sq[layer, g] = base_sq.get((layer, g), 0.0) + float(b[step])
  out = {f"relative_update/{g}/{layer}": float(np.sqrt(diff_sq[layer, g] / max(base_sq[layer, g], 1e-30)))
         for (layer, g) in diff_sq}
  totals = [out[f"relative_update/all/{i}"] for i in range(config.num_layers)]
  k = max(1, min(k, config.num_layers // 2))
  top = float(np.mean(totals[-k:]))
  out["relative_update/bottom_over_top"] = float(np.mean(totals[:k])) / top if top > 0 else float("nan")
  return out
