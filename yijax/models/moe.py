"""Fine-grained mixture of experts with shared experts (Yi-Lightning / DeepSeek / Qwen2-MoE style).

Routing (`router_type`):
  softmax_topk  softmax over all experts, then the top k (optionally renormalised)
  topk_softmax  the top k logits, then softmax over them (Mixtral)
  sigmoid       sigmoid scores; a non-learned selection bias (aux-loss-free
                balancing, DeepSeek-V3) changes which experts are chosen, not
                their weights
Group-limited routing keeps the best `top_expert_groups` of `num_expert_groups`
groups (group score: max for softmax, sum of the top two for sigmoid).

Dispatch (`moe_impl`), all computing the same function when nothing is dropped:
  ragged    dropless: token copies sorted by expert, grouped matmuls (lax.ragged_dot)
  tokamax, tokamax_triton, tokamax_mosaic, padded, pallas
            dropless like ragged, the grouped matmuls by another implementation
            (yijax/models/grouped_matmul.py: tokamax kernels, block-aligned
            padding into batched matmuls, a Pallas Triton kernel)
  capacity  GShard einsum dispatch into [experts, capacity] slots; overflow dropped
  dense     every expert on every token, weighted by the (sparse) routing: the test reference
With an `expert` mesh axis > 1 the dropless paths run under shard_map: each device
keeps its experts and token copies travel to them and back with all-to-all.

Per MoE layer the block sows into "losses" (load_balance, router_z, already
scaled by their coefficients) and "stats" (expert_load: fraction of token
copies per expert; dropped: fraction dropped by capacity).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from yijax import sharding
from yijax.models.config import GROUPED_MATMUL_IMPLS, ModelConfig
from yijax.models.grouped_matmul import gmm
from yijax.models.layers import Linear, dtype_of
from yijax.models.mlp import SwiGLU


# ---------------------------------------------------------------------------- routing


def _group_limit(scores, num_groups: int, top_groups: int, sigmoid: bool):
  """Masks (to -inf) the experts outside the best `top_groups` groups. scores [t, e]."""
  if num_groups <= 1:
    return scores
  t, e = scores.shape
  grouped = scores.reshape(t, num_groups, e // num_groups)
  group_score = jnp.sum(jax.lax.top_k(grouped, 2)[0], -1) if sigmoid else jnp.max(grouped, -1)
  _, best = jax.lax.top_k(group_score, top_groups)
  keep = jnp.zeros((t, num_groups), bool).at[jnp.arange(t)[:, None], best].set(True)
  return jnp.where(jnp.repeat(keep, e // num_groups, axis=1), scores, -jnp.inf)


def route(config: ModelConfig, logits, selection_bias=None):
  """(weights [t, k] f32, experts [t, k] int32, probs [t, e] f32 for the balance loss)."""
  k = config.num_experts_per_token
  logits = logits.astype(jnp.float32)
  if config.router_type == "topk_softmax":
    top_logits, experts = jax.lax.top_k(_group_limit(logits, config.num_expert_groups,
                                                     config.top_expert_groups, False), k)
    weights = jax.nn.softmax(top_logits, axis=-1)
    probs = jax.nn.softmax(logits, axis=-1)
  elif config.router_type == "softmax_topk":
    probs = jax.nn.softmax(logits, axis=-1)
    limited = _group_limit(probs, config.num_expert_groups, config.top_expert_groups, False)
    weights, experts = jax.lax.top_k(limited, k)
    if config.norm_topk_prob:
      weights = weights / jnp.sum(weights, -1, keepdims=True)
  else:  # sigmoid, DeepSeek-V3
    scores = jax.nn.sigmoid(logits)
    choice = scores if selection_bias is None else scores + jax.lax.stop_gradient(selection_bias)
    choice = _group_limit(choice, config.num_expert_groups, config.top_expert_groups, True)
    _, experts = jax.lax.top_k(choice, k)
    weights = jnp.take_along_axis(scores, experts, axis=-1)
    if config.norm_topk_prob:
      weights = weights / (jnp.sum(weights, -1, keepdims=True) + 1e-20)
    probs = scores / jnp.sum(scores, -1, keepdims=True)
  return weights * config.routed_scaling_factor, experts.astype(jnp.int32), probs


def expert_fractions(experts, mask, num_experts: int):
  """Fraction of the valid token copies sent to each expert [e] (sums to 1)."""
  counts = jnp.zeros(num_experts, jnp.float32).at[experts.reshape(-1)].add(
      jnp.repeat(mask, experts.shape[-1]).astype(jnp.float32))
  return counts / jnp.maximum(jnp.sum(counts), 1.0)


def load_balance_loss(probs, experts, mask, num_experts: int, rows=None):
  """Switch/GShard: E * sum_e f_e P_e (1.0 at perfect balance). rows [t] gives the
  sequence-level variant: the same per row, averaged over rows."""
  def one(probs, experts, mask):
    f = expert_fractions(experts, mask, num_experts)
    p = jnp.sum(probs * mask[:, None], 0) / jnp.maximum(jnp.sum(mask), 1.0)
    return num_experts * jnp.sum(f * p)

  if rows is None:
    return one(probs, experts, mask)
  per_row = jax.vmap(one)(probs.reshape(rows, -1, num_experts), experts.reshape(rows, -1, experts.shape[-1]),
                          mask.reshape(rows, -1))
  row_valid = jnp.any(mask.reshape(rows, -1), axis=1)
  return jnp.sum(per_row * row_valid) / jnp.maximum(jnp.sum(row_valid), 1)


def router_z_loss(logits, mask):
  z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.square(z) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ---------------------------------------------------------------------------- expert compute


def _swiglu_rows(x, wi_gate, wi_up, wo, group_sizes, impl):
  gate = gmm(x, wi_gate, group_sizes, impl)
  up = gmm(x, wi_up, group_sizes, impl)
  return gmm(nn.silu(gate) * up, wo, group_sizes, impl)


def experts_ragged(x, experts, weights, wi_gate, wi_up, wo, impl: str = "ragged"):
  """Dropless: x [t, d]; each token's k copies sorted by expert through grouped
  matmuls (`impl`: one of GROUPED_MATMUL_IMPLS)."""
  t, k = experts.shape
  flat = experts.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  token_of = order // k
  group_sizes = jnp.bincount(flat, length=wi_gate.shape[0]).astype(jnp.int32)
  y = _swiglu_rows(x[token_of], wi_gate, wi_up, wo, group_sizes, impl)  # [t*k, d] in sorted order
  y = y * weights.reshape(-1)[order][:, None].astype(y.dtype)
  return jnp.zeros_like(x).at[token_of].add(y)


def experts_dense(x, experts, weights, wi_gate, wi_up, wo):
  """Reference: every expert on every token; routing weights zero for the unchosen."""
  dense_w = jnp.zeros((x.shape[0], wi_gate.shape[0]), weights.dtype)
  dense_w = dense_w.at[jnp.arange(x.shape[0])[:, None], experts].add(weights)
  h = nn.silu(jnp.einsum("td,edf->tef", x, wi_gate)) * jnp.einsum("td,edf->tef", x, wi_up)
  y = jnp.einsum("tef,efd->ted", h, wo)
  return jnp.einsum("ted,te->td", y, dense_w.astype(y.dtype))


def experts_capacity(x, experts, weights, wi_gate, wi_up, wo, capacity_factor: float):
  """GShard einsum dispatch with capacity ceil(t*k/E * factor); returns (y, dropped fraction)."""
  t, k = experts.shape
  num_experts = wi_gate.shape[0]
  capacity = max(int(math.ceil(t * k / num_experts * capacity_factor)), 1)
  onehot = jax.nn.one_hot(experts, num_experts, dtype=jnp.int32)  # [t, k, e]
  # slot of each copy: earlier tokens (and earlier choices of a token) first
  position = jnp.cumsum(onehot.transpose(1, 0, 2).reshape(t * k, num_experts), axis=0).reshape(k, t, num_experts)
  position = position.transpose(1, 0, 2) * onehot - 1  # [t, k, e]; -1 where not routed
  kept = (position >= 0) & (position < capacity)
  dispatch = jax.nn.one_hot(jnp.where(kept, position, -1), capacity, dtype=x.dtype)  # [t, k, e, c]
  dispatch = jnp.sum(dispatch, axis=1)  # [t, e, c]
  combine = jnp.einsum("tk,tkec->tec", weights.astype(x.dtype),
                       jax.nn.one_hot(jnp.where(kept, position, -1), capacity, dtype=x.dtype))
  xe = jnp.einsum("tec,td->ecd", dispatch, x)
  h = nn.silu(jnp.einsum("ecd,edf->ecf", xe, wi_gate)) * jnp.einsum("ecd,edf->ecf", xe, wi_up)
  ye = jnp.einsum("ecf,efd->ecd", h, wo)
  dropped = 1.0 - jnp.sum(kept) / (t * k)
  return jnp.einsum("tec,ecd->td", combine, ye), dropped


def experts_all_to_all(x, experts, weights, wi_gate, wi_up, wo, axis: str, capacity_factor: float,
                       impl: str = "ragged"):
  """Expert parallelism (inside shard_map): local tokens x [t, d], local experts [E/ep, ...].

  Each token copy goes to the device owning its expert in a fixed-size buffer
  of `capacity` rows per destination (dropless: capacity = t*k), all-to-all
  there and back, grouped matmuls in between. Returns (y, dropped fraction).
  """
  t, k = experts.shape
  ep = jax.lax.psum(1, axis)
  local_experts = wi_gate.shape[0]
  capacity = t * k if capacity_factor <= 0 else max(int(math.ceil(t * k / ep * capacity_factor)), 1)
  flat = experts.reshape(-1)
  dest = flat // local_experts
  order = jnp.argsort(flat, stable=True)  # grouped by destination, then by expert
  dest_sorted = dest[order]
  starts = jnp.searchsorted(dest_sorted, jnp.arange(ep), side="left")
  slot = jnp.arange(t * k) - starts[dest_sorted]
  keep = slot < capacity
  slot = jnp.where(keep, slot, capacity)  # dropped copies go to a discarded slot
  token_of = order // k
  send = jnp.zeros((ep, capacity + 1, x.shape[1]), x.dtype).at[dest_sorted, slot].set(x[token_of])
  send_expert = jnp.full((ep, capacity + 1), local_experts, jnp.int32).at[dest_sorted, slot].set(
      flat[order] % local_experts)
  recv = jax.lax.all_to_all(send[:, :capacity], axis, 0, 0, tiled=True)
  recv_expert = jax.lax.all_to_all(send_expert[:, :capacity], axis, 0, 0, tiled=True).reshape(-1)
  rows = recv.reshape(-1, x.shape[1])
  row_order = jnp.argsort(recv_expert, stable=True)  # invalid rows (id = local_experts) last
  group_sizes = jnp.bincount(recv_expert, length=local_experts + 1)[:local_experts].astype(jnp.int32)
  y_sorted = _swiglu_rows(rows[row_order], wi_gate, wi_up, wo, group_sizes, impl)
  y = jnp.zeros_like(y_sorted).at[row_order].set(y_sorted).reshape(ep, capacity, -1)
  back = jax.lax.all_to_all(y, axis, 0, 0, tiled=True)
  back = jnp.concatenate([back, jnp.zeros_like(back[:, :1])], axis=1)  # the discarded slot
  y_copies = back[dest_sorted, slot] * (weights.reshape(-1)[order] * keep)[:, None].astype(x.dtype)
  dropped = 1.0 - jnp.mean(keep.astype(jnp.float32))
  return jnp.zeros_like(x).at[token_of].add(y_copies), dropped


# ---------------------------------------------------------------------------- the block


class MoEBlock(nn.Module):
  """Routed experts (+ shared experts) in place of the dense SwiGLU of a layer."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, segment_ids=None):
    cfg = self.config
    b, s, d = x.shape
    e, f = cfg.num_experts, cfg.expert_mlp_dim
    pdtype = dtype_of(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    router = self.param("router", nn.with_logical_partitioning(init, ("embed", None)), (d, e), pdtype)
    bias = None
    if cfg.router_type == "sigmoid":
      bias = self.param("selection_bias", nn.with_logical_partitioning(nn.initializers.zeros, (None,)), (e,),
                        jnp.float32)
    wi_gate = self.param("wi_gate", nn.with_logical_partitioning(init, ("expert", "embed", "mlp")), (e, d, f), pdtype)
    wi_up = self.param("wi_up", nn.with_logical_partitioning(init, ("expert", "embed", "mlp")), (e, d, f), pdtype)
    wo = self.param("wo", nn.with_logical_partitioning(init, ("expert", "mlp", "embed")), (e, f, d), pdtype)

    tokens = x.reshape(b * s, d)
    mask = (jnp.ones((b, s)) if segment_ids is None else (segment_ids != 0)).reshape(-1).astype(jnp.float32)
    logits = jnp.einsum("td,de->te", tokens.astype(jnp.float32), router.astype(jnp.float32))
    weights, experts, probs = route(cfg, logits, bias)
    compute = [a.astype(cfg.dtype) for a in (wi_gate, wi_up, wo)]
    y, dropped = self._dispatch(tokens.astype(cfg.dtype), experts, weights, *compute)
    y = y.reshape(b, s, d)

    if cfg.num_shared_experts:
      shared = SwiGLU(d, cfg.num_shared_experts * cfg.shared_expert_mlp_dim, cfg.init_std, cfg.dtype,
                      cfg.param_dtype, name="shared_experts")(x)
      if cfg.shared_expert_gate:
        gate = Linear((1,), ("embed", None), init_std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      name="shared_expert_gate")(x)
        shared = shared * nn.sigmoid(gate)
      y = y + shared

    if cfg.aux_loss_coef:
      rows = b if cfg.aux_loss_type == "sequence" else None
      self.sow("losses", "load_balance", cfg.aux_loss_coef * load_balance_loss(probs, experts, mask, e, rows))
    if cfg.router_z_loss_coef:
      self.sow("losses", "router_z", cfg.router_z_loss_coef * router_z_loss(logits, mask))
    self.sow("stats", "expert_load", expert_fractions(experts, mask, e))
    if dropped is not None:
      self.sow("stats", "dropped", dropped)
    return y

  def _dispatch(self, tokens, experts, weights, wi_gate, wi_up, wo):
    cfg = self.config
    mesh = sharding.active_mesh()
    dropless = cfg.moe_impl in GROUPED_MATMUL_IMPLS
    if mesh is not None and mesh.shape.get("expert", 1) > 1 and dropless:
      return _expert_parallel(tokens, experts, weights, wi_gate, wi_up, wo, mesh, cfg.capacity_factor, cfg.moe_impl)
    if cfg.moe_impl == "capacity":
      return experts_capacity(tokens, experts, weights, wi_gate, wi_up, wo, cfg.capacity_factor)
    if cfg.moe_impl == "dense":
      return experts_dense(tokens, experts, weights, wi_gate, wi_up, wo), None
    return experts_ragged(tokens, experts, weights, wi_gate, wi_up, wo, cfg.moe_impl), None


def _expert_parallel(tokens, experts, weights, wi_gate, wi_up, wo, mesh, capacity_factor, impl="ragged"):
  from jax.sharding import PartitionSpec as P

  from yijax.sharding import shard_map

  batch_axes = sharding.logical_to_spec(("batch",))[0]
  batch_axes = batch_axes if isinstance(batch_axes, tuple) else (batch_axes,) if batch_axes else ()
  if "expert" not in batch_axes:
    raise ValueError("expert parallelism needs the batch sharded over the `expert` mesh axis too "
                     "(sharding rule batch -> (data, fsdp, expert))")
  token_spec = P(batch_axes)

  def local(x, ex, w, g, u, o):
    y, dropped = experts_all_to_all(x, ex, w, g, u, o, "expert", capacity_factor, impl)
    return y, jax.lax.pmean(dropped, batch_axes)

  y, dropped = shard_map(
      local, mesh,
      in_specs=(token_spec, token_spec, token_spec, P("expert"), P("expert"), P("expert")),
      out_specs=(token_spec, P()),
  )(tokens, experts, weights, wi_gate, wi_up, wo)
  return y, (dropped if capacity_factor > 0 else None)


# ---------------------------------------------------------------------------- training hooks


def _lookup(tree, keys):
  for key in keys:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree[0] if isinstance(tree, tuple) else tree


def update_selection_bias(params, stats, rate: float):
  """Aux-loss-free balancing (DeepSeek-V3): each layer's selection bias moves by
  `rate` toward equal load: + for under-loaded experts, - for over-loaded ones."""
  def update(path, leaf):
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[-1] != "selection_bias":
      return leaf
    load = _lookup(stats, keys[:-1] + ["expert_load"])
    if load is None:
      return leaf
    return leaf + rate * jnp.sign(1.0 / leaf.shape[-1] - load).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(update, params)


def load_metrics(stats) -> dict:
  """Scalars for the metrics log: per MoE layer max/mean expert load, dropped fraction."""
  out = {}
  layer = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(stats)[0]:
    keys = [str(getattr(k, "key", "")) for k in path if hasattr(k, "key")]
    if keys and keys[-1] == "expert_load":
      ratio = jnp.max(leaf, axis=-1) * leaf.shape[-1]  # max / mean, per layer
      for value in ratio.reshape(-1):
        out[f"moe/load_max_over_mean/{layer}"] = value
        layer += 1
    elif keys and keys[-1] == "dropped":
      out["moe/dropped"] = jnp.mean(leaf)
  return out
