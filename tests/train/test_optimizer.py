"""Schedules and the weight-decay mask."""

import jax.numpy as jnp
import numpy as np
import pytest

from yijax.models.config import ConfigError
from yijax.train import optimizer
from yijax.train.config import base_config


def _cfg(**changes):
  cfg = base_config().optimizer
  with cfg.unlocked():
    for k, v in changes.items():
      cfg[k] = v
  return cfg


def test_cosine_warms_up_then_decays_to_min():
  sched = optimizer.learning_rate_schedule(_cfg(schedule="cosine", lr=1.0, warmup_steps=10, min_lr_ratio=0.1), 110)
  assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(60)) == pytest.approx(0.55, abs=1e-3)
  assert float(sched(110)) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_in_the_last_fraction():
  sched = optimizer.learning_rate_schedule(
      _cfg(schedule="wsd", lr=2.0, warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0), 100)
  assert float(sched(10)) == pytest.approx(2.0) and float(sched(79)) == pytest.approx(2.0)
  assert float(sched(90)) == pytest.approx(1.0)
  assert float(sched(100)) == pytest.approx(0.0)


def test_constant_for_continual_pretraining():
  sched = optimizer.learning_rate_schedule(_cfg(schedule="constant", lr=3e-5, warmup_steps=0), 50)
  assert all(float(sched(s)) == pytest.approx(3e-5) for s in (0, 1, 25, 50))


def test_bad_schedule_names_the_field():
  with pytest.raises(ConfigError, match="optimizer.schedule"):
    optimizer.learning_rate_schedule(_cfg(schedule="linear"), 10)


def test_decay_mask_excludes_norms_and_embeddings():
  params = {"embed": {"embedding": 1}, "layers": {"attention_norm": {"scale": 1},
                                                   "mlp": {"up_proj": {"kernel": 1}}},
            "final_norm": {"scale": 1}, "lm_head": {"kernel": 1}}
  mask = optimizer.decay_mask(params)
  assert mask == {"embed": {"embedding": False}, "layers": {"attention_norm": {"scale": False},
                                                            "mlp": {"up_proj": {"kernel": True}}},
                  "final_norm": {"scale": False}, "lm_head": {"kernel": True}}


def test_weight_decay_applies_only_where_masked():
  import jax
  tx, _ = optimizer.make_optimizer(_cfg(lr=0.1, warmup_steps=0, weight_decay=0.5, clip_norm=0.0,
                                        schedule="constant"), 10)
  params = {"final_norm": {"scale": jnp.ones(3)}, "lm_head": {"kernel": jnp.ones(3)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["final_norm"]["scale"], 0.0)
  np.testing.assert_allclose(updates["lm_head"]["kernel"], -0.05)
