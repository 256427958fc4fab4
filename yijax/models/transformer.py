"""The Yi decoder: embed -> scanned blocks -> final norm -> LM head.

Parameters (a plain pytree once unboxed), with the leading `layers` axis of
the scanned blocks:

  embed/embedding                      [vocab, embed]
  layers/attention_norm/scale          [layers, embed]
  layers/attention/{q,k,v}_proj/kernel [layers, embed, (kv_)heads, head_dim]
  layers/attention/o_proj/kernel       [layers, heads, head_dim, embed]
  layers/mlp_norm/scale                [layers, embed]
  layers/mlp/{gate,up}_proj/kernel     [layers, embed, mlp]
  layers/mlp/down_proj/kernel          [layers, mlp, embed]
  final_norm/scale                     [embed]
  lm_head/kernel                       [embed, vocab]   (absent when tied)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from yijax import sharding
from yijax.models.attention import Attention
from yijax.models.config import ModelConfig
from yijax.models.layers import Embed, Linear, RMSNorm
from yijax.models.mlp import SwiGLU
from yijax.models.moe import MoEBlock

_SAVED_NAMES = {
    "minimal": ("query_proj", "key_proj", "value_proj", "attention_out", "mlp_out"),
    "save_qkv_out": ("query_proj", "key_proj", "value_proj", "attention_out"),
}


def remat_policy(name: str):
  """The jax.checkpoint policy for a config name ("none" means no remat)."""
  policies = jax.checkpoint_policies
  if name == "full":
    return policies.nothing_saveable
  if name == "dots":
    return policies.dots_saveable
  if name == "dots_no_batch":
    return policies.dots_with_no_batch_dims_saveable
  if name in _SAVED_NAMES:
    return policies.save_only_these_names(*_SAVED_NAMES[name])
  raise ValueError(f"no remat policy named {name!r}")


class DecoderBlock(nn.Module):
  """Pre-norm block (SwiGLU or MoE MLP); returns (x, new_cache) so it runs under nn.scan."""

  config: ModelConfig
  moe: bool = False

  @nn.compact
  def __call__(self, x, positions, segment_ids, cache):
    cfg = self.config
    norm = dict(eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    attn_out, new_cache = Attention(cfg, name="attention")(
        RMSNorm(name="attention_norm", **norm)(x), positions, segment_ids, cache
    )
    x = x + attn_out
    h = RMSNorm(name="mlp_norm", **norm)(x)
    if self.moe:
      mlp_out = MoEBlock(cfg, name="mlp")(h, segment_ids)
    else:
      mlp_out = SwiGLU(cfg.hidden_size, cfg.mlp_dim, init_std=cfg.init_std, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, name="mlp")(h)
    x = sharding.constrain(x + mlp_out, ("batch", "length", "embed"))
    return x, new_cache


class PeriodBlock(nn.Module):
  """Consecutive blocks of different kinds scanned as one step (e.g. dense, dense, MoE)."""

  config: ModelConfig
  kinds: tuple = ()

  @nn.compact
  def __call__(self, x, positions, segment_ids, cache):
    new_caches = []
    for j, moe in enumerate(self.kinds):
      layer_cache = None if cache is None else jax.tree.map(lambda a: a[j], cache)
      x, new = DecoderBlock(self.config, moe, name=f"block_{j}")(x, positions, segment_ids, layer_cache)
      new_caches.append(new)
    if cache is None:
      return x, None
    return x, jax.tree.map(lambda *a: jnp.stack(a), *new_caches)


def layer_stacks(config: ModelConfig) -> list[tuple[str, type, dict, int, int]]:
  """(name, block class, block kwargs, scan length, layers per step) of each scanned stack.

  Dense: one stack `layers`. MoE: `layers` (the first dense layers, if any)
  then `moe_layers`, whose step is one MoE block, or a PeriodBlock of
  moe_layer_interval blocks ending with the MoE one.
  """
  if not config.is_moe:
    return [("layers", DecoderBlock, {"moe": False}, config.num_layers, 1)]
  stacks = []
  if config.first_dense_layers:
    stacks.append(("layers", DecoderBlock, {"moe": False}, config.first_dense_layers, 1))
  period = config.moe_layer_interval
  reps = (config.num_layers - config.first_dense_layers) // period
  if period == 1:
    stacks.append(("moe_layers", DecoderBlock, {"moe": True}, reps, 1))
  else:
    stacks.append(("moe_layers", PeriodBlock, {"kinds": (False,) * (period - 1) + (True,)}, reps, period))
  return stacks


class Transformer(nn.Module):
  """Decoder-only language model.

  __call__(tokens [b, s], positions [b, s] = arange, segment_ids [b, s] = None,
  cache = None, return_hidden = False):
    -> logits [b, s, vocab] float32 (or the final hidden states with
       return_hidden), and (logits, new_cache) when a cache is passed.
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, cfg.init_std, cfg.dtype, cfg.param_dtype)
    stacks = []
    for name, block, kwargs, length, _ in layer_stacks(cfg):
      if cfg.remat_policy != "none":
        block = nn.remat(block, policy=remat_policy(cfg.remat_policy), prevent_cse=False)
      stacks.append(nn.scan(
          block,
          variable_axes={"params": 0, "losses": 0, "stats": 0},
          split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, 0),
          length=length,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, name=name, **kwargs))
    self.stacks = stacks
    self.final_norm = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = Linear(
          (cfg.vocab_size,), ("embed", "vocab"), init_std=cfg.init_std, dtype=cfg.dtype,
          param_dtype=cfg.param_dtype,
      )

  def __call__(self, tokens, positions=None, segment_ids=None, cache=None, return_hidden=False):
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    x = sharding.constrain(self.embed(tokens), ("batch", "length", "embed"))
    new_caches, start = [], 0
    for stack, (_, _, _, length, per_step) in zip(self.stacks, layer_stacks(self.config)):
      layers = length * per_step
      stack_cache = None if cache is None else jax.tree.map(
          lambda a: a[start:start + layers].reshape((length, per_step) + a.shape[1:]) if per_step > 1
          else a[start:start + layers], cache)
      x, stack_new = stack(x, positions, segment_ids, stack_cache)
      if cache is not None:
        new_caches.append(jax.tree.map(lambda a: a.reshape((layers,) + a.shape[2:]) if per_step > 1 else a,
                                       stack_new))
      start += layers
    new_cache = None if cache is None else jax.tree.map(lambda *a: jnp.concatenate(a), *new_caches)
    x = self.final_norm(x)
    out = x if return_hidden else self.logits(x)
    return out if cache is None else (out, new_cache)

  def logits(self, hidden):
    """LM head on final hidden states -> float32 logits [..., vocab]."""
    logits = self.embed.attend(hidden) if self.config.tie_embeddings else self.lm_head(hidden)
    return sharding.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))


def head_kernel(params: Any, config: ModelConfig) -> jax.Array:
  """The [embed, vocab] output matrix, tied or not (for chunked losses)."""
  if config.tie_embeddings:
    return params["embed"]["embedding"].T
  return params["lm_head"]["kernel"]
