"""Context parallelism: attention with the length dimension sharded over a mesh axis.

When the active mesh shards the `length` logical axis (the `sequence` mesh
axis by default), attention runs inside shard_map: batch over the batch
axes, heads over `tensor` where sharded, length over `sequence`.

  ring       (the default) K/V travel around the ring (`blockwise.ring_attention`);
             each device holds only its own chunk of K/V at a time.
  allgather  K/V and their segment ids are all-gathered over `sequence`; the
             local queries attend to the whole sequence with the causal mask
             at their global positions. Simpler, fewer and larger messages,
             but every device holds the full K/V of a layer.

Both balance causal work with zig-zag chunks: the sequence is cut into 2n
chunks and device r computes chunks r and 2n-1-r, so every device has the
same number of unmasked (query, key) pairs. The model keeps its activations
in ordinary contiguous order; attention moves its inputs into zig-zag order
with two collective permutes (q/k/v/segment ids for ring, only q and its
segment ids for allgather, whose gathered K/V stay contiguous) and moves the
output back. Nothing outside this call knows about the layout, at the price
of one extra exchange of the local activations per attention call.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from yijax import sharding
from yijax.models import blockwise

MODES = ("ring", "allgather")


def _fitted_spec(names, shape):
  """The PartitionSpec `sharding.constrain` would give an array of this shape on the active mesh."""
  mesh, rules = sharding.active_mesh(), sharding.active_rules()
  return sharding.fit_spec(sharding.logical_to_spec(names, rules), shape, mesh)


def _axes(entry) -> tuple:
  return () if entry is None else entry if isinstance(entry, tuple) else (entry,)


def sequence_axes(shape) -> tuple:
  """Mesh axes (of total size > 1) that shard the length of a [batch, length, heads, head_dim] array."""
  mesh = sharding.active_mesh()
  if mesh is None:
    return ()
  axes = _axes(_fitted_spec(("batch", "length", "heads", "head_dim"), shape)[1])
  return axes if math.prod(mesh.shape[a] for a in axes) > 1 else ()


def context_parallel_mode(setting: str, shape) -> str | None:
  """The algorithm for queries of this shape: None when their length is not sharded on the
  active mesh (or setting is "none": GSPMD partitions the kernel as it can); "auto" is ring."""
  if setting == "none" or not sequence_axes(shape):
    return None
  mode = "ring" if setting == "auto" else setting
  if mode not in MODES:
    raise ValueError(f"context_parallel={setting!r} is not one of auto, none, {', '.join(MODES)}")
  return mode


def _to_zigzag(x, axis, n):
  """Device r's contiguous chunks (2r, 2r+1) [b, 2c, ...] -> its zig-zag chunks (r, 2n-1-r).

  Two collective permutes: all even chunks move in one, all odd chunks in the
  other (each is a permutation of the devices); of r and 2n-1-r one is even."""
  c = x.shape[1] // 2
  holder = lambda chunk: chunk if chunk < n else 2 * n - 1 - chunk
  even = jax.lax.ppermute(x[:, :c], axis, [(r, holder(2 * r)) for r in range(n)])
  odd = jax.lax.ppermute(x[:, c:], axis, [(r, holder(2 * r + 1)) for r in range(n)])
  r_even = jax.lax.axis_index(axis) % 2 == 0
  return jnp.where(r_even, jnp.concatenate([even, odd], 1), jnp.concatenate([odd, even], 1))


def _from_zigzag(x, axis, n):
  """The inverse of _to_zigzag: zig-zag chunks (r, 2n-1-r) -> contiguous chunks (2r, 2r+1)."""
  c = x.shape[1] // 2
  r_even = jax.lax.axis_index(axis) % 2 == 0
  even, odd = jnp.where(r_even, x[:, :c], x[:, c:]), jnp.where(r_even, x[:, c:], x[:, :c])
  even_chunk = lambda r: r if r % 2 == 0 else 2 * n - 1 - r
  first = jax.lax.ppermute(even, axis, [(r, even_chunk(r) // 2) for r in range(n)])
  second = jax.lax.ppermute(odd, axis, [(r, (2 * n - 1 - even_chunk(r)) // 2) for r in range(n)])
  return jnp.concatenate([first, second], 1)


def _local_kv_heads(k, v, local_heads, group, head_axes):
  """The K/V heads this device's query heads use, when K/V heads are not sharded like the
  query heads (e.g. one K/V head, tensor=2): a slice when the groups line up, else a gather."""
  first = jax.lax.axis_index(head_axes) * local_heads if head_axes else 0
  if local_heads % group == 0:
    index = first // group + jnp.arange(local_heads // group)
  elif group % local_heads == 0:
    index = jnp.reshape(first // group, (1,))
  else:
    index = (first + jnp.arange(local_heads)) // group
  return jnp.take(k, index, axis=2), jnp.take(v, index, axis=2)


def context_parallel_attention(q, k, v, segment_ids, scale, mode="ring", *, window=0,
                               block=blockwise.DEFAULT_BLOCK):
  """Causal attention with the length sharded on the active mesh (see `context_parallel_mode`).

  q [b, s, heads, d]; k, v [b, s, kv_heads, d]; segment_ids [b, s] or None -> [b, s, heads, d].
  """
  from yijax.sharding import shard_map

  if mode not in MODES:
    raise ValueError(f"context parallel mode {mode!r} is not one of {MODES}")
  mesh = sharding.active_mesh()
  if mesh is None:
    raise ValueError("context parallelism needs an active mesh: call it inside `sharding.use_mesh(mesh)`")
  b, s, heads, _ = q.shape
  q_spec = _fitted_spec(("batch", "length", "heads", "head_dim"), q.shape)
  kv_spec = _fitted_spec(("batch", "length", "kv_heads", "head_dim"), k.shape)
  seq = _axes(q_spec[1])
  if not seq:
    raise ValueError(f"the length of q {q.shape} is not sharded on the active mesh: nothing to parallelize")
  n = math.prod(mesh.shape[a] for a in seq)
  if s % (2 * n):
    raise ValueError(f"context parallelism cuts the sequence into 2 x {n} zig-zag chunks (mesh axes {seq}): "
                     f"length {s} is not divisible by {2 * n}; pad sequences to a multiple of {2 * n}")
  axis = seq[0] if len(seq) == 1 else seq
  head_axes = _axes(q_spec[2])
  heads_match = head_axes == _axes(kv_spec[2])
  if not heads_match:
    kv_spec = P(kv_spec[0], kv_spec[1], None, kv_spec[3])
  group = heads // k.shape[2]
  if segment_ids is None:
    segment_ids = jnp.ones((b, s), jnp.int32)

  def local(q, k, v, seg):
    if not heads_match:
      k, v = _local_kv_heads(k, v, q.shape[2], group, head_axes[0] if len(head_axes) == 1 else head_axes)
    zigzag = lambda x: _to_zigzag(x, axis, n)
    if mode == "ring":
      out = blockwise.ring_attention(zigzag(q), zigzag(k), zigzag(v), zigzag(seg), axis, n, scale,
                                     window=window, block=block)
    else:
      gather = lambda x: jax.lax.all_gather(x, axis, axis=1, tiled=True)
      r, c = jax.lax.axis_index(axis), q.shape[1] // 2
      out = blockwise.flash_attention(
          zigzag(q), gather(k), gather(v), jnp.stack([r, 2 * n - 1 - r]) * c, jnp.zeros((1,), jnp.int32),
          zigzag(seg), gather(seg), scale, window=window, block_q=block, block_kv=block)
    return _from_zigzag(out, axis, n)

  seg_spec = P(q_spec[0], q_spec[1])
  return shard_map(local, mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec)(
      q, k, v, segment_ids.astype(jnp.int32))
