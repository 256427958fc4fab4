"""Grouped-query attention with a choice of kernel and a functional KV cache.

Kernels (`attention_impl`):
  xla     einsum reference; any backend, any mask
  cudnn   cuDNN flash attention through `jax.nn.dot_product_attention` (NVIDIA)
  splash  Pallas splash attention (TPU; interpret mode elsewhere, for tests)
  blockwise  flash attention in pure JAX, memory linear in length (`blockwise.py`)
  auto    cudnn on GPU, splash on TPU; elsewhere xla below
          `blockwise.BLOCKWISE_MIN_LENGTH` (1024) tokens, blockwise from there on

With the length sharded over the `sequence` mesh axis, attention is context
parallel instead (`config.context_parallel`: ring or allgather, see
`context_parallel.py`), whatever the kernel.

The KV cache of a full-attention layer is `{"k": [batch, max_len, kv_heads,
head_dim], "v": same}`: a token at position p is written to slot p and attends
to slots 0..p, so prompts of different lengths (right-padded, padding at
position -1) share one cache. A sliding-window layer keeps a ring buffer of
its last `window` tokens with their positions (`{"k", "v", "pos"}`).
"""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from yijax import sharding
from yijax.models import blockwise, context_parallel, rope
from yijax.models.config import ModelConfig
from yijax.models.layers import Linear

NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


def resolve_impl(impl: str, seq_len: int = 0) -> str:
  """The kernel `auto` means for this backend and sequence length."""
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  fallback = "blockwise" if seq_len >= blockwise.BLOCKWISE_MIN_LENGTH else "xla"
  return {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(backend, fallback)


_SAID: set = set()


def _say_once(message: str) -> None:
  if message not in _SAID:
    _SAID.add(message)
    logging.warning(message)


def causal_segment_mask(q_index, kv_index, q_segments=None, kv_segments=None, window: int = 0):
  """[batch, q_len, kv_len] bool: kv_index <= q_index within the same segment
  (and q_index - kv_index < window for sliding-window attention)."""
  mask = kv_index[:, None, :] <= q_index[:, :, None]
  if window:
    mask &= kv_index[:, None, :] > q_index[:, :, None] - window
  if q_segments is not None:
    mask &= q_segments[:, :, None] == kv_segments[:, None, :]
  return mask


def xla_attention(q, k, v, mask, scale):
  """q [b, s, heads, d]; k, v [b, t, kv_heads, d]; mask [b, s, t] -> [b, s, heads, d]."""
  b, s, h, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, s, kv_heads, h // kv_heads, d)
  scores = jnp.einsum("bskgd,btkd->bkgst", q, k, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask[:, None, None], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
  return out.reshape(b, s, h, d)


def cudnn_attention(q, k, v, segment_ids, scale, window: int = 0):
  """cuDNN flash attention (bf16/fp16 on NVIDIA GPUs); packed segments as a mask."""
  mask = None
  if segment_ids is not None:
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [b, 1, s, s]
  out = jax.nn.dot_product_attention(
      q, k, v, mask=mask, scale=scale, is_causal=True, implementation="cudnn",
      local_window_size=(window - 1, 0) if window else None,
  )
  return out.astype(q.dtype)


def _splash_kernel(num_heads: int, seq_len: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  block = min(512, seq_len)
  sizes = sk.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block,
      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
      block_q_dq=block, block_kv_dq=block,
  )
  mask = sm.MultiHeadMask([sm.CausalMask((seq_len, seq_len)) for _ in range(num_heads)])
  return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, segment_ids, scale):
  """Pallas splash attention, vmapped over batch (and shard_mapped on a mesh)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

  b, s, h, d = q.shape
  if s % 128:
    raise ValueError(f"splash attention needs a sequence length divisible by 128, got {s}")
  if segment_ids is None:
    segment_ids = jnp.ones((b, s), jnp.int32)
  interpret = jax.default_backend() != "tpu"

  def per_shard(q, k, v, seg):  # q [b, local heads, s, d]
    kernel = _splash_kernel(q.shape[1], q.shape[2], interpret)
    run = lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=sk.SegmentIds(q=s1, kv=s1))
    return jax.vmap(run)(q, k, v, seg)

  # splash wants [batch, heads, length, head_dim] and an unscaled product
  qt = jnp.swapaxes(q * scale, 1, 2)
  kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  mesh = sharding.active_mesh()
  if mesh is None:
    out = per_shard(qt, kt, vt, segment_ids)
  else:
    from jax.sharding import PartitionSpec as P

    batch_axes = sharding.logical_to_spec(("batch",))[0]
    head_axes = sharding.logical_to_spec(("heads",))[0]
    kv_head_axes = sharding.logical_to_spec(("kv_heads",))[0]
    out = sharding.shard_map(
        per_shard, mesh,
        in_specs=(P(batch_axes, head_axes), P(batch_axes, kv_head_axes), P(batch_axes, kv_head_axes), P(batch_axes)),
        out_specs=P(batch_axes, head_axes),
    )(qt, kt, vt, segment_ids)
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def update_cache(cache, k, v, positions):
  """Writes k, v [b, s, kv_heads, d] at slots `positions` [b, s]; negative positions
  (padding) are not written."""
  batch_index = jnp.arange(k.shape[0])[:, None]
  slots = jnp.where(positions >= 0, positions, cache["k"].shape[1])
  new_k = cache["k"].at[batch_index, slots].set(k.astype(cache["k"].dtype), mode="drop")
  new_v = cache["v"].at[batch_index, slots].set(v.astype(cache["v"].dtype), mode="drop")
  return {"k": new_k, "v": new_v}


def update_window_cache(cache, k, v, positions):
  """Ring buffer of the last `window` tokens: {"k", "v": [b, window, ...], "pos": [b, window]}.

  Only each row's newest `window` valid tokens are written (slot = pos % window),
  so no two writes of one call land in the same slot."""
  window = cache["pos"].shape[1]
  newest = jnp.max(positions, axis=1, keepdims=True)
  keep = (positions >= 0) & (positions > newest - window)
  slots = jnp.where(keep, positions % window, window)
  batch_index = jnp.arange(k.shape[0])[:, None]
  return {
      "k": cache["k"].at[batch_index, slots].set(k.astype(cache["k"].dtype), mode="drop"),
      "v": cache["v"].at[batch_index, slots].set(v.astype(cache["v"].dtype), mode="drop"),
      "pos": cache["pos"].at[batch_index, slots].set(positions.astype(jnp.int32), mode="drop"),
  }


def cached_kv_view(cache, k, v, positions, window: int):
  """(keys/values a query may see {"k", "v", "pos"}, the updated cache) in decoding."""
  if window:
    view = {"k": jnp.concatenate([cache["k"].astype(k.dtype), k], axis=1),
            "v": jnp.concatenate([cache["v"].astype(v.dtype), v], axis=1),
            "pos": jnp.concatenate([cache["pos"], positions.astype(jnp.int32)], axis=1)}
    return view, update_window_cache(cache, k, v, positions)
  new_cache = update_cache(cache, k, v, positions)
  slots = jnp.broadcast_to(jnp.arange(new_cache["k"].shape[1], dtype=jnp.int32),
                           (k.shape[0], new_cache["k"].shape[1]))
  return {"k": new_cache["k"].astype(k.dtype), "v": new_cache["v"].astype(v.dtype), "pos": slots}, new_cache


def cache_mask(q_pos, k_pos, window: int = 0):
  """[b, s, t]: a cached key is visible when written, not in the future and inside the window."""
  mask = (k_pos[:, None, :] >= 0) & (k_pos[:, None, :] <= q_pos[:, :, None])
  if window:
    mask &= k_pos[:, None, :] > q_pos[:, :, None] - window
  return mask


class Attention(nn.Module):
  """GQA self-attention: q/k/v projections, RoPE, kernel, output projection.

  window > 0: sliding-window attention over the last `window` tokens.
  owns_kv False: the layer has no k/v projections and attends to `shared`,
  the K/V view of the first layer of its KV-sharing group.
  Returns (out, new_cache, kv_view) where kv_view is what followers reuse.
  """

  config: ModelConfig
  window: int = 0
  owns_kv: bool = True

  @nn.compact
  def __call__(self, x, positions, segment_ids=None, cache=None, shared=None):
    cfg = self.config
    head_dim = cfg.resolved_head_dim
    kw = dict(init_std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    inv_freq, rope_scale = rope.inv_freq_for(
        positions, head_dim, cfg.rope_theta, cfg.rope_type, cfg.rope_scaling, cfg.max_seq_len
    )
    q = Linear((cfg.num_heads, head_dim), ("embed", "heads", "head_dim"), name="q_proj", **kw)(x)
    q = rope.apply_rope(q, positions, inv_freq, rope_scale)
    q = sharding.constrain(checkpoint_name(q, "query_proj"), ("batch", "length", "heads", "head_dim"))
    scale = head_dim ** -0.5
    new_cache = None
    if self.owns_kv:
      k = Linear((cfg.num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), name="k_proj", **kw)(x)
      v = Linear((cfg.num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), name="v_proj", **kw)(x)
      k = rope.apply_rope(k, positions, inv_freq, rope_scale)
      k = sharding.constrain(checkpoint_name(k, "key_proj"), ("batch", "length", "kv_heads", "head_dim"))
      v = sharding.constrain(checkpoint_name(v, "value_proj"), ("batch", "length", "kv_heads", "head_dim"))
      if cache is not None and segment_ids is not None:
        # prefill into an empty cache: the prompt attends within itself through the training kernels
        # (memory linear in its length), and its K/V are written to the cache for decoding
        view = {"k": k, "v": v}
        new_cache = (update_window_cache if self.window else update_cache)(cache, k, v, positions)
      elif cache is not None:
        view, new_cache = cached_kv_view(cache, k, v, positions, self.window)
      else:
        view = {"k": k, "v": v}
    else:
      view = shared

    if "pos" in view:  # decoding against a cache
      out = xla_attention(q, view["k"], view["v"], cache_mask(positions, view["pos"], self.window), scale)
    else:
      out = self._attend(q, view["k"], view["v"], segment_ids, scale)
    out = sharding.constrain(out, ("batch", "length", "heads", "head_dim"))
    out = Linear((cfg.hidden_size,), ("heads", "head_dim", "embed"), contract_ndim=2, name="o_proj", **kw)(out)
    return checkpoint_name(out, "attention_out"), new_cache, view

  def _attend(self, q, k, v, segment_ids, scale):
    mode = context_parallel.context_parallel_mode(self.config.context_parallel, q.shape)
    if mode:
      return context_parallel.context_parallel_attention(q, k, v, segment_ids, scale, mode, window=self.window)
    impl = resolve_impl(self.config.attention_impl, q.shape[1])
    if impl == "blockwise":
      return blockwise.blockwise_attention(q, k, v, segment_ids, scale, window=self.window)
    if impl == "cudnn":
      return cudnn_attention(q, k, v, segment_ids, scale, self.window)
    if impl == "splash" and not self.window:
      return splash_attention(q, k, v, segment_ids, scale)
    if impl == "splash":
      _say_once(f"splash attention has no sliding window here: a {self.window}-token window layer runs the XLA "
                "kernel, whose memory grows with the square of the length")
    index = jnp.broadcast_to(jnp.arange(q.shape[1]), q.shape[:2])
    mask = causal_segment_mask(index, index, segment_ids, segment_ids, self.window)
    return xla_attention(q, k, v, mask, scale)
