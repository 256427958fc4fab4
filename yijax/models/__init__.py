"""yijax models: pure functions over parameter pytrees.

  params = init_params(config, rng)                 # or sharded, with a mesh
  logits = apply(config, params, tokens, positions, segment_ids)
  cache  = init_cache(config, batch, max_len)
  logits, cache = apply(config, params, tokens, positions, cache=cache)
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from yijax import sharding
from yijax.models.config import ConfigError, ModelConfig
from yijax.models import transformer
from yijax.models.transformer import Transformer, head_kernel

__all__ = [
    "ConfigError", "ModelConfig", "Transformer", "abstract_params", "apply", "head_kernel",
    "init_cache", "init_params", "param_count", "param_shardings",
]


def init_fn(config: ModelConfig):
  model = Transformer(config.replace(attention_impl="xla"))
  dummy = jnp.zeros((1, 1), jnp.int32)

  def init(rng):
    return model.init(rng, dummy)["params"]

  return init


def abstract_params(config: ModelConfig) -> Any:
  """Boxed abstract parameters (shapes, dtypes, logical axis names); allocates nothing."""
  return jax.eval_shape(init_fn(config), jax.random.key(0))


def param_shardings(config: ModelConfig, mesh, rules=None) -> Any:
  return sharding.shardings_for(abstract_params(config), mesh, rules)


def init_params(config: ModelConfig, rng: jax.Array, mesh=None, rules=None) -> Any:
  """Initialized parameters; with a mesh, each created directly in its sharding."""
  config.validate()
  init = init_fn(config)
  unboxed = lambda rng: nn.unbox(init(rng))
  if mesh is None:
    return jax.jit(unboxed)(rng)
  return jax.jit(unboxed, out_shardings=param_shardings(config, mesh, rules))(rng)


def apply(config: ModelConfig, params: Any, tokens, positions=None, segment_ids=None, cache=None,
          return_hidden: bool = False, return_aux: bool = False, dropout_rng=None, embedding_noise=None):
  """Runs the model. With a cache (models.init_cache): positions say which slots the tokens fill; segment_ids
  given as well mean a prefill into an empty cache (1 = prompt, 0 = padding), attended through the training
  kernels, while without them the tokens attend to everything the cache holds (decoding). With return_aux,
  also returns {"losses": {name: scalar},
  "stats": tree}: the auxiliary losses the layers sow (summed over layers,
  already scaled by their coefficients: the train loss adds them as they
  are) and per-layer statistics (MoE expert load, dropped fraction). dropout_rng: a PRNG key that turns on
  config.dropout_rate (training only). embedding_noise: [b, s, embed] added to the token embeddings
  (NEFTune; training only)."""
  model = Transformer(config)
  args = (tokens, positions, segment_ids, cache, return_hidden, embedding_noise)
  rngs = {"dropout": dropout_rng} if dropout_rng is not None and config.dropout_rate else None
  if not return_aux:
    return model.apply({"params": params}, *args, rngs=rngs)
  out, variables = model.apply({"params": params}, *args, mutable=["losses", "stats"], rngs=rngs)
  return out, {"losses": sum_losses(variables.get("losses", {})), "stats": variables.get("stats", {})}


def sum_losses(tree) -> dict[str, jax.Array]:
  """Sums every sown loss under the same name (over layers and stacks)."""
  totals: dict[str, jax.Array] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(k.key) for k in path if hasattr(k, "key")]
    name = keys[-1] if keys else "aux"
    totals[name] = totals.get(name, 0.0) + jnp.sum(leaf.astype(jnp.float32))
  return totals


def head_logits(config: ModelConfig, params: Any, hidden):
  """Float32 logits from final hidden states (`apply(..., return_hidden=True)`)."""
  return Transformer(config).apply({"params": params}, hidden, method=Transformer.logits)


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
  """An empty KV cache (a pytree shaped like the layer stacks; see transformer.init_cache)."""
  return transformer.init_cache(config, batch, max_len, jnp.dtype(dtype or config.dtype))


def param_count(config: ModelConfig) -> dict[str, Any]:
  """Parameter counts from abstract shapes: total, embedding, per layer, bytes by dtype."""
  shapes = nn.unbox(abstract_params(config))
  sizes = {"/".join(str(getattr(k, "key", k)) for k in path): math.prod(leaf.shape)
           for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  total = sum(sizes.values())
  embedding = sizes.get("embed/embedding", 0) + sizes.get("lm_head/kernel", 0)
  layer_total = sum(v for k, v in sizes.items() if "layers/" in k)
  routed = sum(v for k, v in sizes.items() if k.rsplit("/", 1)[-1] in ("wi_gate", "wi_up", "wo"))
  inactive = routed * (1 - config.num_experts_per_token / config.num_experts) if config.is_moe else 0
  return {
      "total": total,
      "active": int(total - inactive),  # parameters a token passes through (top-k of the routed experts)
      "embedding": embedding,
      "non_embedding": total - embedding,
      "per_layer": layer_total // config.num_layers,
      "layers": config.num_layers,
      "bytes": {d: total * jnp.dtype(d).itemsize for d in ("float32", "bfloat16")},
      "tensors": sizes,
  }
