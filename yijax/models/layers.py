"""Basic layers with logical axis names: RMSNorm, token embedding, projections."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def dtype_of(name: str):
  return jnp.dtype(name)


class RMSNorm(nn.Module):
  """Root-mean-square norm, computed in float32 (as Hugging Face Llama does)."""

  eps: float = 1e-5
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
        "scale",
        nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        (x.shape[-1],),
        dtype_of(self.param_dtype),
    )
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return normed.astype(self.dtype) * scale.astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table [vocab, embed]; `attend` is the tied output head."""

  vocab_size: int
  features: int
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("vocab", "embed")),
        (self.vocab_size, self.features),
        dtype_of(self.param_dtype),
    )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.einsum("...e,ve->...v", x, self.embedding.astype(self.dtype))


class Linear(nn.Module):
  """A bias-free projection contracting the last `contract_ndim` input dims.

  kernel shape: input dims contracted + `features`; `axes` names every kernel
  dimension, e.g. ("embed", "heads", "head_dim") for a query projection.
  """

  features: Sequence[int]
  axes: Sequence[str]
  contract_ndim: int = 1
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[-self.contract_ndim:]
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std), tuple(self.axes)),
        tuple(in_shape) + tuple(self.features),
        dtype_of(self.param_dtype),
    )
    contract_x = tuple(range(x.ndim - self.contract_ndim, x.ndim))
    contract_k = tuple(range(self.contract_ndim))
    return jax.lax.dot_general(
        x.astype(self.dtype), kernel.astype(self.dtype), ((contract_x, contract_k), ((), ()))
    )
