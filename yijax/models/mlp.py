"""SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name

from yijax import sharding
from yijax.models.layers import Linear


class SwiGLU(nn.Module):
  hidden_size: int
  mlp_dim: int
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = Linear((self.mlp_dim,), ("embed", "mlp"), name="gate_proj", **kw)(x)
    up = Linear((self.mlp_dim,), ("embed", "mlp"), name="up_proj", **kw)(x)
    hidden = checkpoint_name(nn.silu(gate) * up, "mlp_hidden")  # [batch, length, mlp]
    hidden = sharding.constrain(hidden, ("batch", "length", "mlp"))
    out = Linear((self.hidden_size,), ("mlp", "embed"), name="down_proj", **kw)(hidden)
    return checkpoint_name(out, "mlp_out")
