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
  if name == "offload":  # keep minimal's activations in host memory, not on the accelerator
    return policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=list(_SAVED_NAMES["minimal"]),
        offload_src="device", offload_dst="pinned_host")
  raise ValueError(f"no remat policy named {name!r}")


def dropout(config: ModelConfig, module: nn.Module, x):
  """x with config.dropout_rate of its entries zeroed (the rest scaled up to keep the mean) where the caller
  passed a "dropout" key (models.apply(dropout_rng=...)); x unchanged otherwise."""
  if not config.dropout_rate or not module.has_rng("dropout"):
    return x
  # one random byte per unit (a quarter of the PRNG work of a float32 draw: dropout's cost on CPU is the PRNG);
  # the rate is rounded to a multiple of 1/256
  threshold = round(config.dropout_rate * 256)
  keep = jax.random.bits(module.make_rng("dropout"), x.shape, jnp.uint8) >= threshold
  return jnp.where(keep, x * (256.0 / (256 - threshold)), 0).astype(x.dtype)


def token_cosine(a, b):
  """Per token, the cosine between a block's input and output hidden states [..., embed] -> [...] float32."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return jnp.sum(a * b, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-30)


class DecoderBlock(nn.Module):
  """Pre-norm block: attention (full or sliding, own or shared K/V), then SwiGLU or MoE.

  Under nn.scan it returns (x, new_cache); inside a PeriodBlock it also
  returns its K/V view (return_view) for the layers that share it.
  """

  config: ModelConfig
  moe: bool = False
  window: int = 0
  owns_kv: bool = True

  @nn.compact
  def __call__(self, x, positions, segment_ids, cache, shared=None, return_view=False):
    cfg = self.config
    norm = dict(eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    block_input = x
    attn_out, new_cache, view = Attention(cfg, self.window, self.owns_kv, name="attention")(
        RMSNorm(name="attention_norm", **norm)(x), positions, segment_ids, cache, shared
    )
    x = x + dropout(cfg, self, attn_out)
    h = RMSNorm(name="mlp_norm", **norm)(x)
    if self.moe:
      mlp_out = MoEBlock(cfg, name="mlp")(h, segment_ids)
    else:
      mlp_out = SwiGLU(cfg.hidden_size, cfg.mlp_dim, init_std=cfg.init_std, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, name="mlp")(h)
    x = sharding.constrain(x + dropout(cfg, self, mlp_out), ("batch", "length", "embed"))
    if self.is_mutable_collection("intermediates"):  # asked for (analysis.layer_cosine); free otherwise
      self.sow("intermediates", "cosine", token_cosine(block_input, x))
    return (x, new_cache, view) if return_view else (x, new_cache)


class PeriodBlock(nn.Module):
  """Consecutive blocks of different kinds scanned as one step (e.g. sliding,
  sliding, full; or dense, MoE), passing shared K/V to the layers that reuse it."""

  config: ModelConfig
  specs: tuple = ()  # per block: (moe, window, owns_kv)

  @nn.compact
  def __call__(self, x, positions, segment_ids, cache):
    new_cache, view = {}, None
    for j, (moe, window, owns_kv) in enumerate(self.specs):
      name = f"block_{j}"
      layer_cache = cache[name] if cache is not None and owns_kv else None
      x, layer_new, layer_view = DecoderBlock(self.config, moe, window, owns_kv, name=name)(
          x, positions, segment_ids, layer_cache, None if owns_kv else view, return_view=True)
      if owns_kv:
        view = layer_view
        if cache is not None:
          new_cache[name] = layer_new
    return x, (new_cache if cache is not None else None)


def _period(specs: list, group: int) -> int:
  """The shortest period (a multiple of the KV-sharing group) that repeats `specs` exactly."""
  for p in range(group, len(specs) + 1, group):
    if len(specs) % p == 0 and all(specs[i] == specs[i % p] for i in range(len(specs))):
      return p
  return len(specs)


def layer_stacks(config: ModelConfig) -> list[tuple[str, type, dict, int, tuple]]:
  """(name, block class, block kwargs, scan length, per-layer specs of one step) per scanned stack.

  A dense model is one stack `layers`; an MoE model `layers` (its first dense
  layers, if any) then `moe_layers`. A stack whose layers differ (MoE every
  n-th layer, an attention pattern, KV sharing) scans a PeriodBlock of one period.
  """
  bounds = [(0, config.num_layers, "layers")]
  if config.is_moe:
    first = config.first_dense_layers
    bounds = ([(0, first, "layers")] if first else []) + [(first, config.num_layers, "moe_layers")]
  stacks = []
  for start, end, name in bounds:
    specs = [config.layer_spec(i) for i in range(start, end)]
    period = _period(specs, config.kv_share_group)
    step = tuple(specs[:period])
    if period == 1:
      moe, window, _ = step[0]
      stacks.append((name, DecoderBlock, {"moe": moe, "window": window}, end - start, step))
    else:
      stacks.append((name, PeriodBlock, {"specs": step}, (end - start) // period, step))
  return stacks


def _layer_cache(config: ModelConfig, window: int, length: int, batch: int, max_len: int, dtype):
  slots = window or max_len
  shape = (length, batch, slots, config.num_kv_heads, config.resolved_head_dim)
  cache = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
  if window:
    cache["pos"] = jnp.full((length, batch, window), -1, jnp.int32)
  return cache


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype) -> dict:
  """An empty KV cache shaped like the stacks: full layers hold max_len slots,
  sliding layers a window-sized ring buffer, layers sharing K/V nothing."""
  cache = {}
  for name, block, kwargs, length, step in layer_stacks(config):
    if block is DecoderBlock:
      cache[name] = _layer_cache(config, step[0][1], length, batch, max_len, dtype)
    else:
      cache[name] = {f"block_{j}": _layer_cache(config, window, length, batch, max_len, dtype)
                     for j, (_, window, owns_kv) in enumerate(step) if owns_kv}
  return cache


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
          variable_axes={"params": 0, "losses": 0, "stats": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, 0),
          length=length,
          unroll=max(1, min(cfg.scan_unroll, length)),
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, name=name, **kwargs))
    self.stacks = stacks
    self.stack_names = [name for name, *_ in layer_stacks(cfg)]
    self.final_norm = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = Linear(
          (cfg.vocab_size,), ("embed", "vocab"), init_std=cfg.init_std, dtype=cfg.dtype,
          param_dtype=cfg.param_dtype,
      )

  def __call__(self, tokens, positions=None, segment_ids=None, cache=None, return_hidden=False, embedding_noise=None):
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    x = self.embed(tokens)
    if embedding_noise is not None:  # NEFTune: noise on the embeddings while fine-tuning
      x = x + embedding_noise.astype(x.dtype)
    x = sharding.constrain(dropout(self.config, self, x), ("batch", "length", "embed"))
    new_cache = None if cache is None else {}
    for name, stack in zip(self.stack_names, self.stacks):
      x, stack_cache = stack(x, positions, segment_ids, None if cache is None else cache[name])
      if cache is not None:
        new_cache[name] = stack_cache
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
