"""Per-layer input/output cosine similarity (Yi's depth up-scaling rule; checkpoint dynamics).

For each layer, the cosine between every token's hidden state before and after the layer, averaged over
tokens (padding and each document's first token excluded). Read from the model's own forward pass: every
decoder block sows its per-token cosine into the `intermediates` collection when asked, so dense, MoE and
hybrid-attention models (scanned stacks, periods of several layer kinds) are all measured the same way.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from yijax.errors import ConfigError
from yijax.models.config import ModelConfig
from yijax.models.transformer import Transformer
from yijax.train import layerwise


@functools.lru_cache(maxsize=8)
def _cosine_fn(config: ModelConfig):
  """jit(params, tokens, positions, segment_ids) -> ({path: per scan step mean cosine}, scored tokens)."""
  model = Transformer(config.replace(remat_policy="none"))

  def run(params, tokens, positions, segment_ids):
    _, variables = model.apply({"params": params}, tokens, positions, segment_ids, None, True,
                               mutable=["intermediates"])
    mask = (segment_ids != 0) & (positions != 0)  # no padding, no first token of a document
    count = jnp.maximum(jnp.sum(mask), 1)
    means = jax.tree.map(lambda cos: jnp.sum(jnp.where(mask, cos, 0.0), axis=(-2, -1)) / count,
                         variables["intermediates"])
    return means, jnp.sum(mask)

  return jax.jit(run)


def model_level_cosine(per_layer: Sequence[float]) -> float | None:
  """The mean over layers excluding the first and the last two (None below 4 layers)."""
  inner = list(per_layer)[1:-2]
  return float(np.mean(inner)) if inner else None


def layer_cosine(config: ModelConfig, params: Any, tokens, positions=None, segment_ids=None) -> dict:
  """{"per_layer": [cosine of layer i], "model_level": model_level_cosine, "tokens": scored tokens}.
  tokens: [batch, length] (or [length]) int ids; segment_ids 1.. per document, 0 = padding."""
  from yijax.eval.perplexity import positions_from_segments

  tokens = np.asarray(tokens, np.int32)
  if tokens.ndim == 1:
    tokens = tokens[None]
  segment_ids = np.ones_like(tokens) if segment_ids is None else np.asarray(segment_ids, np.int32).reshape(tokens.shape)
  if positions is None:
    positions = positions_from_segments(segment_ids)
  positions = np.asarray(positions, np.int32).reshape(tokens.shape)
  means, count = jax.device_get(_cosine_fn(config)(params, tokens, positions, segment_ids))
  if int(count) == 0:
    raise ConfigError("layer_cosine scored no tokens: every row is padding or one token long")
  index = layerwise.layer_index(config)
  per_layer = [0.0] * config.num_layers
  for path, steps in jax.tree_util.tree_flatten_with_path(means)[0]:
    keys = [str(getattr(k, "key", k)) for k in path]  # stack, [block_j,] "cosine", sow's tuple index
    block = keys[1] if keys[1].startswith("block_") else None
    for step, value in enumerate(np.asarray(steps)):
      per_layer[index[keys[0], step, block]] = float(value)
  return {"per_layer": per_layer, "model_level": model_level_cosine(per_layer), "tokens": int(count)}
