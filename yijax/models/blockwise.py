"""Attention whose memory is linear in length, and ring attention.

blockwise_attention: flash attention in pure JAX. Queries are cut into
blocks; each query block scans the key/value blocks with an online softmax
(running max and sum), so no [length, length] matrix is ever formed. A custom
VJP saves only q, k, v, the output and the log-sum-exp per row; the backward
recomputes each block's probabilities, so it is linear in length too. A
(query block, key block) pair that the causal (or sliding-window) mask hides
entirely is skipped with `lax.cond` (about half the work of causal attention);
`skip_masked_blocks=False` computes and masks every pair instead.

flash_attention: the same kernel for queries and keys at arbitrary global
positions (chunks of consecutive tokens), which context parallelism needs.

ring_attention (inside shard_map, see `context_parallel.py`): K/V and their
segment ids travel around the ring with `ppermute`; each step folds one
remote chunk into the online softmax with the kernel above. The backward is a
second ring pass in a custom VJP: dK/dV accumulate while travelling with K/V
and take one last step home.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -0.7 * float(np.finfo(np.float32).max)
PAD_Q = -1  # index of a padding query: sees no key
PAD_KV = int(np.iinfo(np.int32).max)  # index of a padding key: seen by no query
DEFAULT_BLOCK = 512
# attention_impl="auto" off GPU/TPU: plain XLA (the reference, quicker to compile) below this
# many tokens, blockwise from it on; on CPU blockwise fwd+bwd measured about 2x faster from 1K tokens
BLOCKWISE_MIN_LENGTH = 1024
F32 = jnp.float32


# ---------------------------------------------------------------------------- blocks


def _split(x, block):
  """[b, n*block, ...] -> [n, b, block, ...]."""
  b, length = x.shape[:2]
  return jnp.moveaxis(x.reshape((b, length // block, block) + x.shape[2:]), 1, 0)


def _merge(x):
  """[n, b, block, ...] -> [b, n*block, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape((x.shape[0], -1) + x.shape[3:])


def _grouped_blocks(x, block, kv_heads):
  """[b, s, heads, d] -> [n, b, block, kv_heads, group, d]: query heads grouped by their K/V head."""
  b, length, heads, d = x.shape
  return _split(x.reshape(b, length, kv_heads, heads // kv_heads, d), block)


def _q_blocks(q, index, segments, block, kv_heads):
  """(q [n, b, block, kv_heads, group, d], index [n, block], segments [n, b, block] | None)."""
  seg = None if segments is None else _split(segments, block)
  return _grouped_blocks(q, block, kv_heads), index.reshape(-1, block), seg


def _kv_blocks(k, v, index, segments, block):
  """(k, v [n, b, block, kv_heads, d], index [n, block], segments [n, b, block] | None)."""
  seg = None if segments is None else _split(segments, block)
  return _split(k, block), _split(v, block), index.reshape(-1, block), seg


def _unblock(x, dtype):
  """[n, b, block, kv_heads, group, d] -> [b, n*block, heads, d]."""
  x = _merge(x)
  return x.reshape(x.shape[:2] + (-1, x.shape[-1])).astype(dtype)


def _mask(qi, ki, qs, ks, window):
  """[b | 1, 1, 1, bq, bk] bool: key index <= query index (within the window), same segment."""
  mask = ki[None, :] <= qi[:, None]
  if window:
    mask &= ki[None, :] > qi[:, None] - window
  mask = mask[None, None, None]
  if qs is not None:
    mask = mask & (qs[:, None, None, :, None] == ks[:, None, None, None, :])
  return mask


def _live(qi, ki, window):
  """Whether the mask of a (query block, key block) pair can have any True entry."""
  live = jnp.min(ki) <= jnp.max(qi)
  if window:
    live &= jnp.max(ki) > jnp.min(qi) - window
  return live


def _skippable(fn, skip, qi, ki, window):
  """fn(carry), or under `skip` the carry unchanged when the block pair is fully masked."""
  if not skip:
    return fn
  return lambda carry: jax.lax.cond(_live(qi, ki, window), fn, lambda c: c, carry)


# ---------------------------------------------------------------------------- forward / backward


def _init_state(q_blocks):
  """Online-softmax state per query block: (acc [n, b, kv, g, bq, d], max, sum [n, b, kv, g, bq])."""
  n, b, bq, kv, g, d = q_blocks.shape
  rows = (n, b, kv, g, bq)
  return jnp.zeros(rows + (d,), F32), jnp.full(rows, NEG_INF, F32), jnp.zeros(rows, F32)


def _forward_block(q, k, v, qi, ki, qs, ks, state, scale, window):
  """Folds one key block into the state. q [b, bq, kv, g, d]; k, v [b, bk, kv, d]."""
  acc, row_max, row_sum = state
  mask = _mask(qi, ki, qs, ks, window)
  scores = jnp.einsum("bqkgd,btkd->bkgqt", q, k, preferred_element_type=F32) * scale
  scores = jnp.where(mask, scores, NEG_INF)
  new_max = jnp.maximum(row_max, scores.max(-1))
  probs = jnp.where(mask, jnp.exp(scores - new_max[..., None]), 0.0)
  correction = jnp.exp(row_max - new_max)
  row_sum = row_sum * correction + probs.sum(-1)
  pv = jnp.einsum("bkgqt,btkd->bkgqd", probs.astype(v.dtype), v, preferred_element_type=F32)
  return acc * correction[..., None] + pv, new_max, row_sum


def _forward(qb, kb, state, scale, window, skip):
  """Every query block scans every key block. qb = (q, index, segments); kb = (k, v, index, segments)."""
  def per_query_block(args):
    (q, qi, qs), st = args

    def step(st, kv):
      k, v, ki, ks = kv
      fold = lambda s: _forward_block(q, k, v, qi, ki, qs, ks, s, scale, window)
      return _skippable(fold, skip, qi, ki, window)(st), None

    return jax.lax.scan(step, st, kb)[0]

  return jax.lax.map(per_query_block, (qb, state))


def _finalize(state):
  """-> (out [n, b, bq, kv, g, d] f32, lse [n, b, kv, g, bq]); rows that saw no key give 0 and lse=inf."""
  acc, row_max, row_sum = state
  seen = row_sum > 0
  safe = jnp.where(seen, row_sum, 1.0)
  out = jnp.moveaxis(acc / safe[..., None], -2, 2)
  return out, jnp.where(seen, row_max + jnp.log(safe), jnp.inf)


def _grad_blocks(do, out, lse, block, kv_heads):
  """(do blocks like q's, lse, delta = rowsum(do * out) [n, b, kv, g, bq])."""
  do_b, out_b = _grouped_blocks(do, block, kv_heads), _grouped_blocks(out, block, kv_heads)
  delta = jnp.einsum("nbqkgd,nbqkgd->nbkgq", do_b.astype(F32), out_b.astype(F32))
  return do_b, lse, delta


def _backward_block(q, do, lse, delta, k, v, qi, ki, qs, ks, grads, scale, window):
  """Adds one block pair's share to (dq [b, bq, kv, g, d], dk, dv [b, bk, kv, d]), all f32."""
  dq, dk, dv = grads
  scores = jnp.einsum("bqkgd,btkd->bkgqt", q, k, preferred_element_type=F32) * scale
  probs = jnp.where(_mask(qi, ki, qs, ks, window), jnp.exp(scores - lse[..., None]), 0.0)
  dv = dv + jnp.einsum("bkgqt,bqkgd->btkd", probs.astype(do.dtype), do, preferred_element_type=F32)
  dprobs = jnp.einsum("bqkgd,btkd->bkgqt", do, v, preferred_element_type=F32)
  dscores = probs * (dprobs - delta[..., None]) * scale  # [b, kv, g, bq, bk]
  dq = dq + jnp.einsum("bkgqt,btkd->bqkgd", dscores.astype(k.dtype), k, preferred_element_type=F32)
  dk = dk + jnp.einsum("bkgqt,bqkgd->btkd", dscores.astype(q.dtype), q, preferred_element_type=F32)
  return dq, dk, dv


def _backward(qb, gb, dq, kb, scale, window, skip):
  """Outer scan over key blocks (dk, dv in the carry of an inner scan over query blocks);
  dq [n, b, bq, kv, g, d] f32 accumulates across key blocks. -> (dq, dk, dv blocks)."""
  def per_key_block(dq, kv):
    k, v, ki, ks = kv

    def step(dkv, xs):
      (q, qi, qs), (do, lse, delta), dq_block = xs
      add = lambda g: _backward_block(q, do, lse, delta, k, v, qi, ki, qs, ks, g, scale, window)
      dq_block, dk, dv = _skippable(add, skip, qi, ki, window)((dq_block,) + dkv)
      return (dk, dv), dq_block

    zeros = jnp.zeros(k.shape, F32)
    (dk, dv), dq = jax.lax.scan(step, (zeros, zeros), (qb, gb, dq))
    return dq, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(per_key_block, dq, kb)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def _flash(q, k, v, qi, ki, qs, ks, scale, window, block_q, block_kv, skip):
  return _flash_fwd(q, k, v, qi, ki, qs, ks, scale, window, block_q, block_kv, skip)[0]


def _flash_fwd(q, k, v, qi, ki, qs, ks, scale, window, block_q, block_kv, skip):
  qb = _q_blocks(q, qi, qs, block_q, k.shape[2])
  state = _forward(qb, _kv_blocks(k, v, ki, ks, block_kv), _init_state(qb[0]), scale, window, skip)
  out, lse = _finalize(state)
  out = _unblock(out, q.dtype)
  return out, (q, k, v, qi, ki, qs, ks, out, lse)


def _flash_bwd(scale, window, block_q, block_kv, skip, res, do):
  q, k, v, qi, ki, qs, ks, out, lse = res
  qb = _q_blocks(q, qi, qs, block_q, k.shape[2])
  gb = _grad_blocks(do, out, lse, block_q, k.shape[2])
  dq, dk, dv = _backward(qb, gb, jnp.zeros(qb[0].shape, F32), _kv_blocks(k, v, ki, ks, block_kv),
                         scale, window, skip)
  return _unblock(dq, q.dtype), _merge(dk).astype(k.dtype), _merge(dv).astype(v.dtype), None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---------------------------------------------------------------------------- public kernels


def _fit_block(chunk, block):
  """(block size, chunk length padded to a multiple of it)."""
  block = min(block, chunk)
  return block, -(-chunk // block) * block


def _pad_chunks(x, chunks, padded):
  """[b, chunks*c, ...] -> [b, chunks*padded, ...]: each chunk zero-padded at its end."""
  b, length = x.shape[:2]
  c = length // chunks
  if padded == c:
    return x
  x = x.reshape((b, chunks, c) + x.shape[2:])
  x = jnp.pad(x, [(0, 0), (0, 0), (0, padded - c)] + [(0, 0)] * (x.ndim - 3))
  return x.reshape((b, chunks * padded) + x.shape[3:])


def _unpad_chunks(x, chunks, c):
  b, length = x.shape[:2]
  if length == chunks * c:
    return x
  return x.reshape((b, chunks, length // chunks) + x.shape[2:])[:, :, :c].reshape((b, chunks * c) + x.shape[2:])


def _chunk_index(starts, chunk, padded, pad_value):
  """[len(starts) * padded] int32: chunk i holds the global indices starts[i] + 0..chunk-1, then padding."""
  offsets = jnp.arange(padded, dtype=jnp.int32)
  index = jnp.asarray(starts, jnp.int32)[:, None] + offsets
  return jnp.where(offsets < chunk, index, pad_value).reshape(-1)


def flash_attention(q, k, v, q_starts, kv_starts, q_segments=None, kv_segments=None, scale=None, *,
                    window=0, block_q=DEFAULT_BLOCK, block_kv=DEFAULT_BLOCK, skip_masked_blocks=True):
  """Causal attention of queries at arbitrary global positions over keys at others.

  q [b, s, heads, d] is len(q_starts) equal chunks of consecutive tokens, chunk
  i starting at global index q_starts[i] (traced values are fine); k, v
  [b, t, kv_heads, d] likewise with kv_starts. A query sees keys at global
  index <= its own (and > its own - window), with equal segment ids.
  Chunks that are not a multiple of the block size are padded and the
  padding masked. -> [b, s, heads, d].
  """
  q_chunks, kv_chunks = int(np.shape(q_starts)[0]), int(np.shape(kv_starts)[0])
  if q.shape[1] % q_chunks or k.shape[1] % kv_chunks:
    raise ValueError(f"lengths {q.shape[1]}, {k.shape[1]} do not split into {q_chunks}, {kv_chunks} chunks")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value heads")
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  cq, ck = q.shape[1] // q_chunks, k.shape[1] // kv_chunks
  bq, pq = _fit_block(cq, block_q)
  bk, pk = _fit_block(ck, block_kv)
  pad_q = lambda x: None if x is None else _pad_chunks(x, q_chunks, pq)
  pad_kv = lambda x: None if x is None else _pad_chunks(x, kv_chunks, pk)
  if (q_segments is None) != (kv_segments is None):
    raise ValueError("give both q_segments and kv_segments, or neither")
  out = _flash(pad_q(q), pad_kv(k), pad_kv(v), _chunk_index(q_starts, cq, pq, PAD_Q),
               _chunk_index(kv_starts, ck, pk, PAD_KV), pad_q(q_segments), pad_kv(kv_segments),
               float(scale), int(window), bq, bk, bool(skip_masked_blocks))
  return _unpad_chunks(out, q_chunks, cq)


def blockwise_attention(q, k, v, segment_ids=None, scale=None, *, window=0, block_q=DEFAULT_BLOCK,
                        block_kv=DEFAULT_BLOCK, skip_masked_blocks=True):
  """Causal self-attention over packed segments with memory linear in length (forward and backward).

  q [b, s, heads, d]; k, v [b, s, kv_heads, d]; segment_ids [b, s] or None
  -> [b, s, heads, d]; equal to `attention.xla_attention` with the causal segment mask.
  """
  start = jnp.zeros((1,), jnp.int32)
  return flash_attention(q, k, v, start, start, segment_ids, segment_ids, scale, window=window,
                         block_q=block_q, block_kv=block_kv, skip_masked_blocks=skip_masked_blocks)


# ---------------------------------------------------------------------------- ring attention


def _zigzag_index(device, n, chunk, padded, pad_value):
  """Global indices of the zig-zag chunks (device, 2n-1-device), each padded to `padded`."""
  return _chunk_index(jnp.stack([device, 2 * n - 1 - device]) * chunk, chunk, padded, pad_value)


def _shift(tree, axis, n):
  """Sends every array to the next device of the ring (device r -> r+1 mod n)."""
  perm = [(r, (r + 1) % n) for r in range(n)]
  return jax.tree.map(lambda x: jax.lax.ppermute(x, axis, perm), tree)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9, 10))
def _ring(q, k, v, seg, axis, n, chunk, scale, window, block, skip):
  return _ring_fwd(q, k, v, seg, axis, n, chunk, scale, window, block, skip)[0]


def _ring_fwd(q, k, v, seg, axis, n, chunk, scale, window, block, skip):
  """q [b, 2p, heads, d], k, v [b, 2p, kv_heads, d], seg [b, 2p]: zig-zag order, chunks padded to p."""
  r, padded = jax.lax.axis_index(axis), q.shape[1] // 2
  qb = _q_blocks(q, _zigzag_index(r, n, chunk, padded, PAD_Q), seg, block, k.shape[2])

  def attend(state, kvs, src):  # kvs came from device src
    kb = _kv_blocks(*kvs[:2], _zigzag_index(src, n, chunk, padded, PAD_KV), kvs[2], block)
    return _forward(qb, kb, state, scale, window, skip)

  def step(carry, i):
    state, kvs = carry
    return (attend(state, kvs, (r - i) % n), _shift(kvs, axis, n)), None

  (state, kvs), _ = jax.lax.scan(step, (_init_state(qb[0]), (k, v, seg)), jnp.arange(n - 1))
  out, lse = _finalize(attend(state, kvs, (r - n + 1) % n))
  out = _unblock(out, q.dtype)
  return out, (q, k, v, seg, out, lse)


def _ring_bwd(axis, n, chunk, scale, window, block, skip, res, do):
  """A second ring pass: dK/dV accumulate while travelling with K/V, then go home."""
  q, k, v, seg, out, lse = res
  r, padded = jax.lax.axis_index(axis), q.shape[1] // 2
  qb = _q_blocks(q, _zigzag_index(r, n, chunk, padded, PAD_Q), seg, block, k.shape[2])
  gb = _grad_blocks(do, out, lse, block, k.shape[2])

  def attend(dq, kvs, grads, src):
    kb = _kv_blocks(*kvs[:2], _zigzag_index(src, n, chunk, padded, PAD_KV), kvs[2], block)
    dq, dk, dv = _backward(qb, gb, dq, kb, scale, window, skip)
    return dq, (grads[0] + _merge(dk), grads[1] + _merge(dv))

  def step(carry, i):
    dq, kvs, grads = carry
    dq, grads = attend(dq, kvs, grads, (r - i) % n)
    return (dq, _shift(kvs, axis, n), _shift(grads, axis, n)), None

  zeros = (jnp.zeros(k.shape, F32), jnp.zeros(v.shape, F32))
  carry = (jnp.zeros(qb[0].shape, F32), (k, v, seg), zeros)
  (dq, kvs, grads), _ = jax.lax.scan(step, carry, jnp.arange(n - 1))
  dq, grads = attend(dq, kvs, grads, (r - n + 1) % n)
  dk, dv = _shift(grads, axis, n)
  return _unblock(dq, q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(q, k, v, segment_ids, axis, axis_size, scale, *, window=0, block=DEFAULT_BLOCK,
                   skip_masked_blocks=True):
  """Ring attention inside shard_map over `axis` (axis_size devices).

  Each device holds its zig-zag chunks (r, 2n-1-r) of the sequence: q [b, 2c,
  heads, d], k, v [b, 2c, kv_heads, d], segment_ids [b, 2c] int. -> [b, 2c, heads, d].
  """
  chunk = q.shape[1] // 2
  block, padded = _fit_block(chunk, block)
  pad = lambda x: _pad_chunks(x, 2, padded)
  out = _ring(pad(q), pad(k), pad(v), pad(segment_ids), axis, axis_size, chunk, float(scale), int(window),
              block, bool(skip_masked_blocks))
  return _unpad_chunks(out, 2, chunk)
