"""optax AdamW with warmup + cosine / warmup-stable-decay / constant / Hugging Face cosine schedules.

`hf_cosine` is transformers' `get_cosine_schedule_with_warmup` as the HF
Trainer drives it (the Yao et al. unlearning recipe): lr * step / warmup
during warmup (so the first update has lr 0 when warmup > 0), then
lr * 0.5 * (1 + cos(pi * progress)) down to 0, where progress =
(step - warmup) / max(1, steps - warmup). `warmup_ratio` > 0 sets warmup to
ceil(ratio * steps) like the Trainer's `warmup_ratio`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from yijax.models.config import ConfigError

SCHEDULES = ("cosine", "wsd", "constant", "hf_cosine")
DECAY_SHAPES = ("linear", "cosine", "sqrt")


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """cfg: the `optimizer` config section."""
  if cfg.schedule not in SCHEDULES:
    raise ConfigError(f"optimizer.schedule={cfg.schedule!r} is not one of {SCHEDULES}")
  peak, warmup = float(cfg.lr), warmup_steps(cfg, total_steps)
  if warmup < 0 or warmup > total_steps:
    raise ConfigError(f"optimizer.warmup_steps={warmup} must be in [0, train.steps={total_steps}]")
  if cfg.schedule == "hf_cosine":
    return _hf_cosine(peak, warmup, total_steps)
  final = peak * float(cfg.min_lr_ratio)
  warm = optax.linear_schedule(0.0 if warmup else peak, peak, max(warmup, 1))
  if cfg.schedule == "constant":
    return optax.join_schedules([warm, optax.constant_schedule(peak)], [warmup])
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1), alpha=float(cfg.min_lr_ratio))
    return optax.join_schedules([warm, decay], [warmup])
  if cfg.decay_shape not in DECAY_SHAPES:
    raise ConfigError(f"optimizer.decay_shape={cfg.decay_shape!r} is not one of {DECAY_SHAPES}")
  decay_steps = max(int(round(total_steps * float(cfg.decay_fraction))), 1)
  stable_steps = max(total_steps - warmup - decay_steps, 0)

  def decay(step):
    frac = jnp.clip(step / decay_steps, 0.0, 1.0)
    shape = {"linear": frac, "sqrt": jnp.sqrt(frac), "cosine": 0.5 * (1 - jnp.cos(jnp.pi * frac))}[cfg.decay_shape]
    return peak + (final - peak) * shape

  return optax.join_schedules([warm, optax.constant_schedule(peak), decay], [warmup, warmup + stable_steps])


def warmup_steps(cfg, total_steps: int) -> int:
  """optimizer.warmup_steps, or ceil(warmup_ratio * steps) when optimizer.warmup_ratio > 0."""
  ratio = float(cfg.get("warmup_ratio", 0.0) or 0.0)
  if not 0.0 <= ratio < 1.0:
    raise ConfigError(f"optimizer.warmup_ratio={ratio} must be in [0, 1) (0 = use optimizer.warmup_steps)")
  return int(math.ceil(ratio * total_steps)) if ratio > 0 else int(cfg.warmup_steps)


def _hf_cosine(peak: float, warmup: int, total_steps: int) -> optax.Schedule:
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = (step - warmup) / max(1, total_steps - warmup)
    decay = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
    return peak * jnp.where(step < warmup, step / max(1, warmup), decay)

  return schedule


def decay_mask(params, no_decay=("norm", "embed")):
  """True for parameters that get weight decay: not those whose path names a `no_decay` word."""
  def wants_decay(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return not any(word in name for word in no_decay)

  return jax.tree_util.tree_map_with_path(wants_decay, params)


# parameters the optimizer never changes (updated by their own rule, e.g. in the train step)
NOT_TRAINED = ("selection_bias",)


def trainable_labels(params):
  def label(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return "frozen" if any(word in name for word in NOT_TRAINED) else "trained"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = learning_rate_schedule(cfg, total_steps)
  parts = []
  if float(cfg.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
  parts.append(optax.adamw(
      schedule, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps),
      weight_decay=float(cfg.weight_decay), mask=lambda p: decay_mask(p, tuple(cfg.no_decay)),
  ))
  trained = optax.chain(*parts)
  return optax.multi_transform({"trained": trained, "frozen": optax.set_to_zero()}, trainable_labels), schedule
