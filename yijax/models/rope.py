"""Rotary position embeddings and their scalings.

Layout: Hugging Face's "rotate half" form. The head dimension is split into
two halves (x1, x2) and rotated as (x1 cos - x2 sin, x2 cos + x1 sin), so
Hugging Face Llama/Yi q/k projection weights load with no permutation (Meta's
original checkpoints interleave pairs instead; HF's conversion script permutes
them once, and yijax reads the HF layout).

Scalings follow `transformers.modeling_rope_utils` rope_type by rope_type:
  default  inv_freq = 1 / theta^(2i/d); the "ABF" base change is rope_theta
  linear   positions / factor (position interpolation)
  dynamic  dynamic NTK: theta grows with the longest position in the batch
  yarn     NTK-by-parts interpolation plus an attention temperature
  llama3   Llama-3.1 wavelength-banded interpolation
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from yijax.models.config import ConfigError

REQUIRED_PARAMS = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _base_inv_freq(head_dim: int, theta: float) -> np.ndarray:
  exponents = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
  return (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)


def check_scaling(rope_type: str, params: Mapping[str, Any]) -> None:
  missing = [k for k in REQUIRED_PARAMS.get(rope_type, ()) if params.get(k) is None]
  if rope_type not in REQUIRED_PARAMS:
    raise ConfigError(f"model.rope_type={rope_type!r} is not one of {tuple(REQUIRED_PARAMS)}")
  if missing:
    raise ConfigError(
        f"model.rope_type={rope_type!r} needs model.rope_scaling_params to hold {missing}"
    )


def _yarn(inv_freq: np.ndarray, head_dim: int, theta: float, p: Mapping[str, Any]):
  factor = float(p["factor"])
  original = float(p["original_max_position_embeddings"])
  beta_fast = float(p.get("beta_fast") or 32)
  beta_slow = float(p.get("beta_slow") or 1)

  def mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

  attention_factor = p.get("attention_factor")
  if attention_factor is None:
    if p.get("mscale") and p.get("mscale_all_dim"):
      attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
    else:
      attention_factor = mscale(factor)

  def correction_dim(rotations):
    return (head_dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if p.get("truncate", True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, head_dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  extrapolation = 1 - ramp
  interpolated = inv_freq / np.float32(factor)
  out = interpolated * (1 - extrapolation) + inv_freq * extrapolation
  return out.astype(np.float32), float(attention_factor)


def _llama3(inv_freq: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
  factor = float(p["factor"])
  low_ff, high_ff = float(p["low_freq_factor"]), float(p["high_freq_factor"])
  old_len = float(p["original_max_position_embeddings"])
  low_wavelen, high_wavelen = old_len / low_ff, old_len / high_ff
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def static_inv_freq(head_dim: int, theta: float, rope_type: str, params: Mapping[str, Any]):
  """(inv_freq [head_dim // 2] float32, attention scaling) for non-dynamic types."""
  check_scaling(rope_type, params)
  inv_freq = _base_inv_freq(head_dim, theta)
  if rope_type == "linear":
    return (inv_freq / np.float32(params["factor"])).astype(np.float32), 1.0
  if rope_type == "yarn":
    return _yarn(inv_freq, head_dim, theta, params)
  if rope_type == "llama3":
    return _llama3(inv_freq, params), 1.0
  return inv_freq, 1.0


def inv_freq_for(positions: jax.Array, head_dim: int, theta: float, rope_type: str,
                 params: Mapping[str, Any], max_seq_len: int):
  """inv_freq for a batch of positions; only `dynamic` depends on the positions."""
  if rope_type != "dynamic":
    inv_freq, scaling = static_inv_freq(head_dim, theta, rope_type, params)
    return jnp.asarray(inv_freq), scaling
  check_scaling(rope_type, params)
  factor = float(params["factor"])
  seq_len = jnp.maximum(jnp.max(positions) + 1, max_seq_len).astype(jnp.float32)
  base = theta * ((factor * seq_len / max_seq_len) - (factor - 1)) ** (head_dim / (head_dim - 2))
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  return 1.0 / (base ** exponents), 1.0


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array, scaling: float = 1.0) -> jax.Array:
  """Rotates x [batch, length, heads, head_dim] by positions [batch, length]."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, length, head_dim/2]
  cos = (jnp.cos(angles) * scaling)[:, :, None, :]
  sin = (jnp.sin(angles) * scaling)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
