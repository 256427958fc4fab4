"""The train state, its sharded initialization, and the jitted train/eval steps."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from yijax import models, sharding
from yijax.models import moe
from yijax.models.config import ModelConfig
from yijax.train import objectives


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # int32 scalar: optimizer steps taken (skipped non-finite steps included)
  params: Any
  opt_state: Any
  rng: jax.Array        # a PRNG key (uint32 key data, for checkpointing)


def _boxed_init(config: ModelConfig, optimizer: optax.GradientTransformation, seed: int):
  init_model = models.init_fn(config)

  def init():
    params = init_model(jax.random.key(seed))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                      jax.random.key_data(jax.random.key(seed + 1)))

  return init


def state_shardings(config: ModelConfig, optimizer, mesh, rules, seed: int = 0):
  """(abstract unboxed TrainState, NamedShardings, logical param specs)."""
  boxed = jax.eval_shape(_boxed_init(config, optimizer, seed))
  shardings = sharding.shardings_for(boxed, mesh, rules)
  return nn.unbox(boxed), shardings, nn.get_partition_spec(boxed.params)


def init_state(config: ModelConfig, optimizer, mesh, rules, seed: int, params=None) -> TrainState:
  """A fresh TrainState created in its sharding (params given: continual pretraining)."""
  _, shardings, _ = state_shardings(config, optimizer, mesh, rules, seed)
  if params is None:
    init = _boxed_init(config, optimizer, seed)
    return jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()

  def from_params(params):
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                      jax.random.key_data(jax.random.key(seed + 1)))

  return jax.jit(from_params, in_shardings=(shardings.params,), out_shardings=shardings)(params)


def make_train_step(config: ModelConfig, optimizer, schedule, z_loss: float, vocab_chunk: int,
                    microbatches: int, objective: str = "lm", freeze_mask=None, objective_options=None):
  """train_step(state, batch, reference=None) -> (state, metrics); one update from `microbatches` passes.

  The objective (objectives.py) returns summed losses and a denominator;
  gradients are summed over microbatches and divided by the summed
  denominator, so any microbatch count gives the same update. A step whose
  loss, gradient norm or update norm is not finite leaves params and
  optimizer untouched (metrics["finite"] = 0). freeze_mask: a pytree like the
  params of 0/1 arrays broadcastable to each parameter (layer freezing).
  """
  objective_fn = objectives.resolve(objective)
  options = {**dict(objective_options or {}), "z_loss": z_loss, "vocab_chunk": vocab_chunk}

  def grads_of(params, batch, reference, rng=None):
    if rng is not None:
      batch = {**batch, "dropout_rng": rng}

    def f(p):
      total, denominator, sums, aux = objective_fn(config, p, batch, reference, options)
      return total, (denominator, sums, aux["losses"], aux["stats"])
    return jax.grad(f, has_aux=True)(params)

  def train_step(state: TrainState, batch, reference=None):
    # dropout's key: the run's key and the step (so a resumed run drops the same units), then the microbatch
    rng = None
    if config.dropout_rate or getattr(objective_fn, "needs_rng", False):  # dropout, or an objective's draws
      rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if microbatches == 1:
      grads, (denominator, sums, aux, stats) = grads_of(state.params, batch, reference, rng)
    else:
      split = jax.tree.map(lambda x: x.reshape((microbatches, -1) + x.shape[1:]), batch)
      shapes = jax.eval_shape(grads_of, state.params, jax.tree.map(lambda x: x[0], split), reference, rng)
      zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

      def accumulate(carry, micro):
        micro, i = micro
        micro_rng = None if rng is None else jax.random.fold_in(rng, i)
        return jax.tree.map(jnp.add, carry, grads_of(state.params, micro, reference, micro_rng)), None

      (grads, (denominator, sums, aux, stats)), _ = jax.lax.scan(
          accumulate, zeros, (split, jnp.arange(microbatches)))
      aux, stats = jax.tree.map(lambda a: a / microbatches, (aux, stats))
    denominator = jnp.maximum(denominator, 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    grad_norm = optax.global_norm(grads)
    loss = sums["loss"] / denominator
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    if freeze_mask is not None:
      updates = jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, freeze_mask)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(updates))
    params = optax.apply_updates(state.params, updates)
    if config.router_bias_update_rate:
      params = moe.update_selection_bias(params, stats, config.router_bias_update_rate)
    keep = lambda new, old: jnp.where(finite, new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
    )
    metrics = {k: v / denominator for k, v in sums.items()}
    metrics.update({"denominator": denominator, "grad_norm": grad_norm, "lr": schedule(state.step), "finite": finite.astype(jnp.int32)})
    metrics.update({f"aux/{k}": v for k, v in aux.items()})
    metrics.update(moe.load_metrics(stats))
    return new_state, metrics

  return train_step


def make_eval_step(config: ModelConfig, vocab_chunk: int):
  """eval_step(params, batch) -> (nll_sum, count) over target tokens."""

  def eval_step(params, batch):
    return objectives.evaluate_nll(config, params, batch, vocab_chunk)

  return eval_step


@functools.lru_cache(maxsize=None)
def _all_finite_fn():
  return jax.jit(lambda tree: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])))


def all_finite(tree) -> bool:
  """True when every floating leaf is finite (checked before each checkpoint)."""
  floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(_all_finite_fn()(floats)) if floats else True
