"""The train step: microbatching is exact, non-finite steps are skipped."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from yijax import models, sharding
from yijax.models.config import ModelConfig
from yijax.train import optimizer as opt_lib, step as step_lib

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     mlp_dim=48, rope_theta=10000.0, max_seq_len=64)


def _opt():
  return ml_collections.ConfigDict(dict(
      lr=1e-2, schedule="constant", warmup_steps=0, min_lr_ratio=0.1, decay_fraction=0.2,
      decay_shape="linear", b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, no_decay=("norm", "embed"),
      clip_norm=1.0))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  segments = np.repeat([[1] * 10 + [2] * 14 + [0] * 8], 4, 0)
  return {"tokens": jnp.asarray(rng.integers(0, 64, (4, 32)), jnp.int32),
          "segment_ids": jnp.asarray(segments, jnp.int32),
          "positions": jnp.asarray(np.repeat([list(range(10)) + list(range(14)) + [0] * 8], 4, 0), jnp.int32)}


def _setup(microbatches):
  tx, schedule = opt_lib.make_optimizer(_opt(), 10)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  state = step_lib.init_state(CONFIG, tx, mesh, sharding.DEFAULT_RULES, seed=0)
  fn = jax.jit(step_lib.make_train_step(CONFIG, tx, schedule, 1e-4, 16, microbatches))
  return state, fn


def test_microbatches_give_the_same_update():
  state1, step1 = _setup(1)
  state2, step2 = _setup(2)
  batch = _batch()
  new1, m1 = step1(state1, batch)
  new2, m2 = step2(state2, batch)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new1.params), jax.tree.leaves(new2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)  # Adam's first step ~ lr * sign(grad)
  assert int(new1.step) == 1 and float(m1["denominator"]) == 4 * (9 + 13)  # target tokens


def test_loss_decreases_on_a_repeated_batch():
  state, step = _setup(1)
  batch = _batch()
  losses = []
  for _ in range(5):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.1


def test_non_finite_step_is_skipped():
  state, step = _setup(1)
  bad = state.replace(params=jax.tree_util.tree_map_with_path(
      lambda p, x: x.at[0, 0].set(jnp.inf) if "lm_head" in jax.tree_util.keystr(p) else x, state.params))
  new, metrics = step(bad, _batch())
  assert int(metrics["finite"]) == 0 and int(new.step) == 1
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(bad.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(bad.opt_state)):
    np.testing.assert_array_equal(a, b)
  assert not step_lib.all_finite(bad.params) and step_lib.all_finite(state.params)


def test_dropout_only_in_the_train_step_and_reproducible():

  dropped = dataclasses.replace(CONFIG, dropout_rate=0.3)
  tx, schedule = opt_lib.make_optimizer(_opt(), 10)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  state = step_lib.init_state(dropped, tx, mesh, sharding.DEFAULT_RULES, seed=0)
  batch = _batch()
  # without a key (eval, scoring, generation) the model is the dropout-free one
  plain = models.apply(CONFIG, state.params, batch["tokens"], batch["positions"], batch["segment_ids"])
  same = models.apply(dropped, state.params, batch["tokens"], batch["positions"], batch["segment_ids"])
  np.testing.assert_array_equal(plain, same)
  key = jax.random.key(3)
  a = models.apply(dropped, state.params, batch["tokens"], batch["positions"], batch["segment_ids"], dropout_rng=key)
  b = models.apply(dropped, state.params, batch["tokens"], batch["positions"], batch["segment_ids"], dropout_rng=key)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(a - plain))) > 1e-3
  # the train step drops units (its loss differs from the dropout-free step's), the same way for the same step
  # (an exact resume), and differently at the next step
  step_plain = jax.jit(step_lib.make_train_step(CONFIG, tx, schedule, 1e-4, 16, 1))
  step_drop = jax.jit(step_lib.make_train_step(dropped, tx, schedule, 1e-4, 16, 1))
  _, m_plain = step_plain(state, batch)
  _, m1 = step_drop(state, batch)
  _, m1_again = step_drop(state, batch)
  _, m2 = step_drop(state.replace(step=state.step + 1), batch)
  assert float(m1["loss"]) == float(m1_again["loss"])
  assert abs(float(m1["loss"]) - float(m_plain["loss"])) > 1e-4
  assert abs(float(m2["loss"]) - float(m1["loss"])) > 1e-4
  new, m = jax.jit(step_lib.make_train_step(dropped, tx, schedule, 1e-4, 16, 2))(state, batch)
  assert int(m["finite"]) == 1 and np.isfinite(float(m["loss"]))


def test_dropout_drops_its_rate_and_keeps_the_mean():
  import flax.linen as nn

  from yijax.models import transformer

  class Dropped(nn.Module):
    @nn.compact
    def __call__(self, x):
      return transformer.dropout(dataclasses.replace(CONFIG, dropout_rate=0.3), self, x)

  x = jnp.ones((200, 1000), jnp.float32)
  y = Dropped().apply({}, x, rngs={"dropout": jax.random.key(0)})
  assert abs(float(jnp.mean(y == 0)) - 0.3) < 0.01 and abs(float(jnp.mean(y)) - 1.0) < 0.01
  np.testing.assert_array_equal(Dropped().apply({}, x), x)  # no key: no dropout
