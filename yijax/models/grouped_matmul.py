"""Grouped matrix multiplication for dropless MoE: y[i] = x[i] @ w[group of row i].

Rows of x [m, k] are sorted by group: the first group_sizes[0] rows use w[0],
the next group_sizes[1] rows w[1], and so on; rows past sum(group_sizes) give
zeros (the padding rows of the expert-parallel buffers). Every implementation
computes this function and its gradients w.r.t. x and w (f32 accumulation):

  ragged          jax.lax.ragged_dot, XLA's own lowering (the reference)
  tokamax         tokamax.ragged_dot, tokamax picking the kernel (see `_tokamax`):
                  Mosaic GPU on Hopper+, else its Triton kernel, else XLA (CPU)
  tokamax_triton  tokamax's Pallas-Triton kernel only (NVIDIA, Ampere+)
  tokamax_mosaic  tokamax's Pallas-Mosaic-GPU kernel only (Hopper+, bf16/f16)
  padded          each group padded to a multiple of `block_size` rows inside a
                  static worst-case buffer, one batched matmul over row blocks
                  with each block's expert weights gathered (pure XLA; costs
                  memory, see `_padded`)
  pallas          this module's Pallas kernel (Triton lowering on GPU, interpret
                  mode elsewhere): a grid of (row tile, column block) with a
                  precomputed tile -> (group, rows) table; custom VJP with the
                  same kernel for dx and a grouped x^T @ dy kernel for dw
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from yijax.models.config import GROUPED_MATMUL_IMPLS

PADDED_BLOCK_SIZE = 256  # rows per block of the `padded` layout (the benchmark sweeps 128/256/512)


@dataclasses.dataclass(frozen=True)
class PallasConfig:
  """Tile sizes of the `pallas` kernels (powers of two, >= 16 for Triton's dot).
  block_m/n/k tile y = x @ w (and dx); the dw kernel writes block_dw x block_dw
  tiles of dw, reducing over its group's rows block_m at a time."""

  block_m: int = 128
  block_n: int = 128
  block_k: int = 64
  num_warps: int = 8
  num_stages: int = 3
  block_dw: int = 128


def gmm(x, w, group_sizes, impl: str = "ragged", *, block_size: int | None = None,
        pallas_config: PallasConfig | None = None, interpret: bool | None = None):
  """Grouped matmul x [m, k] @ w [g, k, n] -> [m, n] in x's dtype; see the module docstring."""
  if impl not in GROUPED_MATMUL_IMPLS:
    raise ValueError(f"grouped matmul impl {impl!r} is not one of {GROUPED_MATMUL_IMPLS}")
  if x.ndim != 2 or w.ndim != 3 or x.shape[1] != w.shape[1] or group_sizes.shape != (w.shape[0],):
    raise ValueError(f"gmm needs x [m, k], w [g, k, n], group_sizes [g]; got {x.shape}, {w.shape}, "
                     f"{group_sizes.shape}")
  dtype = jnp.result_type(x, w)
  x, w, group_sizes = x.astype(dtype), w.astype(dtype), group_sizes.astype(jnp.int32)
  if impl == "ragged":
    return lax.ragged_dot(x, w, group_sizes)
  if impl.startswith("tokamax"):
    return _tokamax(x, w, group_sizes, impl)
  if impl == "padded":
    return _padded(x, w, group_sizes, block_size or PADDED_BLOCK_SIZE)
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  return _pallas_gmm(x, w, group_sizes, pallas_config or PallasConfig(), bool(interpret))


def _zero_tail(y, group_sizes):
  """Rows past sum(group_sizes) -> 0 (kernels that never write them leave garbage)."""
  return jnp.where(jnp.arange(y.shape[0])[:, None] < jnp.sum(group_sizes), y, jnp.zeros((), y.dtype))


# ---------------------------------------------------------------------------- tokamax


def _tokamax(x, w, group_sizes, impl):
  """tokamax.ragged_dot. With implementation=None tokamax tries ("mosaic", "triton", "xla")
  in order, taking the first that does not raise NotImplementedError at trace time:
  Mosaic GPU needs compute capability >= 9.0 and bf16/f16 operands, Triton >= 8.0,
  XLA runs anywhere. Kernel tile sizes come from tokamax's bundled autotuning cache
  (exact shapes per device kind) or else its heuristics. Its Mosaic kernel loops over
  k // block_k (block_k = 128 by heuristics) with no remainder step, so it is only
  picked here when both contracting sizes (k forward, n in dx) are multiples of 128.
  """
  try:
    import tokamax
    from absl import flags
  except ImportError as e:  # an optional dependency: the gpu and test extras
    raise ImportError(f"moe_impl={impl!r} needs tokamax: pip install 'tokamax>=0.0.12'") from e
  if not flags.FLAGS.is_parsed():
    # tokamax reads its options from absl's global flags and would parse sys.argv (failing on any flag it does
    # not know). The yijax command line marks them parsed at startup; library code leaves global state alone.
    from yijax.errors import ConfigError

    raise ConfigError(f"moe_impl={impl!r}: tokamax reads absl's global flags, which are not parsed in this "
                      "process; call absl.flags.FLAGS.mark_as_parsed() once first (the yijax command line and "
                      "absl.app do), or use moe_impl='ragged'")
  if impl == "tokamax_triton":
    order = ("triton",)
  elif impl == "tokamax_mosaic":
    order = ("mosaic",)
  elif x.shape[1] % 128 == 0 and w.shape[2] % 128 == 0:
    order = None  # tokamax's own choice
  else:
    order = ("triton", "xla")
  try:
    y = tokamax.ragged_dot(x, w, group_sizes, implementation=order)
  except NotImplementedError as e:
    raise NotImplementedError(f"grouped matmul impl {impl!r} is not available on "
                              f"{jax.devices()[0].device_kind}: {e}") from e
  return _zero_tail(y, group_sizes)


# ---------------------------------------------------------------------------- padded (XLA)


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _group_bounds(group_sizes, m):
  ends = jnp.minimum(jnp.cumsum(group_sizes), m)
  starts = jnp.concatenate([jnp.zeros(1, jnp.int32), ends[:-1]])
  return starts, ends


def _padded_layout(group_sizes, m: int, block: int):
  """Where each row goes in the block-aligned buffer of static size m + g*(block-1), rounded up.

  Returns (block_group [blocks], src [capacity] and valid [capacity]: the source row of
  each buffer row, dst [m] and row_valid [m]: the buffer row of each source row).
  """
  g = group_sizes.shape[0]
  starts, ends = _group_bounds(group_sizes, m)
  sizes = ends - starts
  padded = -(-sizes // block) * block
  pad_ends = jnp.cumsum(padded)
  pad_starts = pad_ends - padded
  capacity = _round_up(m + g * (block - 1), block)
  block_start = jnp.arange(capacity // block, dtype=jnp.int32) * block
  block_group = jnp.minimum(jnp.searchsorted(pad_ends, block_start, side="right"), g - 1).astype(jnp.int32)
  rows = jnp.arange(capacity, dtype=jnp.int32)
  row_group = block_group[rows // block]
  offset = rows - pad_starts[row_group]
  valid = (offset >= 0) & (offset < sizes[row_group])
  src = jnp.clip(starts[row_group] + offset, 0, m - 1)
  source = jnp.arange(m, dtype=jnp.int32)
  source_group = jnp.minimum(jnp.searchsorted(ends, source, side="right"), g - 1)
  row_valid = source < ends[-1]
  dst = jnp.where(row_valid, pad_starts[source_group] + source - starts[source_group], 0)
  return block_group, src, valid, dst, row_valid


def _to_blocks(a, src, valid, block):
  rows = jnp.where(valid[:, None], a[src], jnp.zeros((), a.dtype))
  return rows.reshape(-1, block, a.shape[1])


def _from_blocks(blocks, dst, row_valid):
  rows = blocks.reshape(-1, blocks.shape[-1])[dst]
  return jnp.where(row_valid[:, None], rows, jnp.zeros((), rows.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _padded(x, w, group_sizes, block):
  """Block-aligned padding. Compute: a batched matmul over capacity/block blocks of
  [block, k] @ [k, n], i.e. m + g*(block-1) rows (padding waste up to g*(block-1)/m).
  Memory: the gathered weights w[block_group] are [blocks, k, n] (about
  (m/block + g) * k * n elements: 1.2 GB bf16 at block 128 for the moe_bench up
  projection, 0.65 GB at 256), and the backward holds the per-block dw in f32 before
  summing blocks of the same group. Large dense GEMMs, but the weight copies are
  memory traffic that a kernel reading w[group] in place (pallas) does not pay."""
  return _padded_fwd(x, w, group_sizes, block)[0]


def _padded_fwd(x, w, group_sizes, block):
  block_group, src, valid, dst, row_valid = _padded_layout(group_sizes, x.shape[0], block)
  y = jnp.einsum("bck,bkn->bcn", _to_blocks(x, src, valid, block), w[block_group],
                 preferred_element_type=jnp.float32).astype(x.dtype)
  return _from_blocks(y, dst, row_valid), (x, w, group_sizes)


def _padded_bwd(block, residuals, dy):
  x, w, group_sizes = residuals
  block_group, src, valid, dst, row_valid = _padded_layout(group_sizes, x.shape[0], block)
  dy_blocks = _to_blocks(dy, src, valid, block)
  dx = jnp.einsum("bcn,bkn->bck", dy_blocks, w[block_group], preferred_element_type=jnp.float32)
  dw_blocks = jnp.einsum("bck,bcn->bkn", _to_blocks(x, src, valid, block), dy_blocks,
                         preferred_element_type=jnp.float32)
  dw = jax.ops.segment_sum(dw_blocks, block_group, num_segments=w.shape[0], indices_are_sorted=True)
  return _from_blocks(dx.astype(x.dtype), dst, row_valid), dw.astype(w.dtype), None


_padded.defvjp(_padded_fwd, _padded_bwd)


# ---------------------------------------------------------------------------- pallas


def _fit(dim: int, preferred: int) -> tuple[int, int]:
  """(block, padded dim): the largest power-of-two block <= preferred (>= 16) dividing dim,
  else 16 with dim padded to a multiple of 16."""
  block = preferred
  while block > 16 and dim % block:
    block //= 2
  return block, _round_up(dim, block)


def _pad2(a, rows: int, cols: int):
  if a.shape[-2:] == (rows, cols):
    return a
  widths = [(0, 0)] * (a.ndim - 2) + [(0, rows - a.shape[-2]), (0, cols - a.shape[-1])]
  return jnp.pad(a, widths)


def _tiles(group_sizes, m: int, block_m: int):
  """The forward's tile table. Tile t covers rows [lo, hi) of row block `block`, all in
  group `group`; group g (one past the last) is the tail past sum(group_sizes), which
  is written as zeros. A group boundary inside a block splits it in two tiles, so
  cdiv(m, block_m) + g tiles always suffice; unused tiles have lo = hi (write nothing)."""
  g = group_sizes.shape[0]
  starts, ends = _group_bounds(group_sizes, m)
  starts = jnp.concatenate([starts, ends[-1:]])
  ends = jnp.concatenate([ends, jnp.full((1,), m, jnp.int32)])
  first = starts // block_m
  count = jnp.where(ends > starts, -(-ends // block_m) - first, 0)
  tile_end = jnp.cumsum(count)
  tile = jnp.arange(-(-m // block_m) + g, dtype=jnp.int32)
  group = jnp.searchsorted(tile_end, tile, side="right").astype(jnp.int32)
  used = group <= g
  group = jnp.minimum(group, g)
  block = first[group] + tile - (tile_end - count)[group]
  lo = jnp.where(used, jnp.maximum(starts[group], block * block_m), 0)
  hi = jnp.where(used, jnp.minimum(ends[group], (block + 1) * block_m), 0)
  return group, jnp.where(used, block, 0), lo, hi


def _gmm_kernel(group_ref, block_ref, lo_ref, hi_ref, x_ref, w_ref, o_ref, *, block_m, block_k, block_n,
                k_steps, group_rows, num_groups, trans_rhs):
  """One (tile, column block): rows of one row block, all of one group, times that
  group's weights; a masked store keeps only the tile's rows [lo, hi)."""
  group, lo, hi = group_ref[...], lo_ref[...], hi_ref[...]
  row0 = _multiple_of(block_ref[...] * block_m, block_m)
  col0 = pl.program_id(1) * block_n

  def step(i, acc):
    k0 = _multiple_of(i * block_k, block_k)
    a = x_ref[pl.ds(row0, block_m), pl.ds(k0, block_k)]
    if trans_rhs:  # w stored [g * n_out, k]: contract both operands' last dims
      b = w_ref[pl.ds(group * group_rows + col0, block_n), pl.ds(k0, block_k)]
      dims = (((1,), (1,)), ((), ()))
    else:  # w stored [g * k, n_out]
      b = w_ref[pl.ds(group * group_rows + k0, block_k), pl.ds(col0, block_n)]
      dims = (((1,), (0,)), ((), ()))
    return acc + lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)

  steps = jnp.where(group < num_groups, k_steps, 0)  # the tail group: zeros, no weights read
  acc = lax.fori_loop(0, steps, step, jnp.zeros((block_m, block_n), jnp.float32))
  rows = row0 + lax.broadcasted_iota(jnp.int32, (block_m, block_n), 0)
  plgpu.store(o_ref.at[pl.ds(row0, block_m), :], acc.astype(o_ref.dtype), mask=(rows >= lo) & (rows < hi))


def _gmm_call(x, w, group_sizes, config: PallasConfig, trans_rhs: bool, interpret: bool):
  """x [m, k] @ w[g] -> [m, n]; w is [g, k, n], or [g, n, k] with trans_rhs (dx = dy @ w^T)."""
  m, k = x.shape
  g = w.shape[0]
  n = w.shape[1] if trans_rhs else w.shape[2]
  block_m = config.block_m
  block_k, k_pad = _fit(k, config.block_k)
  block_n, n_pad = _fit(n, config.block_n)
  m_pad = _round_up(m, block_m)
  x = _pad2(x, m_pad, k_pad)
  w = _pad2(w, n_pad, k_pad) if trans_rhs else _pad2(w, k_pad, n_pad)
  group_rows = w.shape[1]
  tables = _tiles(group_sizes, m, block_m)
  kernel = functools.partial(_gmm_kernel, block_m=block_m, block_k=block_k, block_n=block_n,
                             k_steps=k_pad // block_k, group_rows=group_rows, num_groups=g, trans_rhs=trans_rhs)
  scalar = pl.BlockSpec((None,), lambda t, j: (t,))
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((m_pad, n_pad), x.dtype),
      grid=(tables[0].shape[0], n_pad // block_n),
      in_specs=[scalar] * 4 + [pl.no_block_spec, pl.no_block_spec],
      out_specs=pl.BlockSpec((m_pad, block_n), lambda t, j: (0, j)),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
      interpret=interpret,
      name="yijax_gmm",
  )(*tables, x, w.reshape(g * group_rows, w.shape[2]))
  return out[:m, :n]


def _tgmm_kernel(start_ref, end_ref, x_ref, dy_ref, o_ref, *, block_m, block_k, block_n):
  """dw[g] block (i, j) = sum over the group's rows of x[:, i-block]^T dy[:, j-block];
  loops over the row blocks the group touches, masking rows of other groups."""
  start, end = start_ref[...], end_ref[...]
  k0, n0 = pl.program_id(1) * block_k, pl.program_id(2) * block_n
  first = start // block_m

  def step(s, acc):
    row0 = _multiple_of((first + s) * block_m, block_m)
    rows = row0 + lax.broadcasted_iota(jnp.int32, (block_m, 1), 0)
    inside = (rows >= start) & (rows < end)
    a = jnp.where(inside, x_ref[pl.ds(row0, block_m), pl.ds(k0, block_k)], 0)
    d = jnp.where(inside, dy_ref[pl.ds(row0, block_m), pl.ds(n0, block_n)], 0)
    return acc + lax.dot_general(a, d, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)

  steps = jnp.where(end > start, -(-end // block_m) - first, 0)
  acc = lax.fori_loop(0, steps, step, jnp.zeros((block_k, block_n), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _tgmm_call(x, dy, group_sizes, out_dtype, config: PallasConfig, interpret: bool):
  """dw [g, k, n]: per group x_g^T @ dy_g (rows past the sum contribute nothing)."""
  (m, k), n, g = x.shape, dy.shape[1], group_sizes.shape[0]
  block_m = config.block_m
  block_k, k_pad = _fit(k, config.block_dw)
  block_n, n_pad = _fit(n, config.block_dw)
  m_pad = _round_up(m, block_m)
  starts, ends = _group_bounds(group_sizes, m)
  kernel = functools.partial(_tgmm_kernel, block_m=block_m, block_k=block_k, block_n=block_n)
  scalar = pl.BlockSpec((None,), lambda e, i, j: (e,))
  dw = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((g, k_pad, n_pad), out_dtype),
      grid=(g, k_pad // block_k, n_pad // block_n),
      in_specs=[scalar, scalar, pl.no_block_spec, pl.no_block_spec],
      out_specs=pl.BlockSpec((None, block_k, block_n), lambda e, i, j: (e, i, j)),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
      interpret=interpret,
      name="yijax_tgmm",
  )(starts, ends, _pad2(x, m_pad, k_pad), _pad2(dy, m_pad, n_pad))
  return dw[:, :k, :n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _pallas_gmm(x, w, group_sizes, config, interpret):
  return _gmm_call(x, w, group_sizes, config, False, interpret)


def _pallas_fwd(x, w, group_sizes, config, interpret):
  return _gmm_call(x, w, group_sizes, config, False, interpret), (x, w, group_sizes)


def _pallas_bwd(config, interpret, residuals, dy):
  x, w, group_sizes = residuals
  dx = _gmm_call(dy, w, group_sizes, config, True, interpret)
  dw = _tgmm_call(x, dy, group_sizes, w.dtype, config, interpret)
  return dx, dw, None


_pallas_gmm.defvjp(_pallas_fwd, _pallas_bwd)


def _multiple_of(value, multiple: int):
  """pl.multiple_of (an alignment hint for Triton) on traced values; plain ints pass through."""
  return value if isinstance(value, int) else pl.multiple_of(value, multiple)
