"""The vocabulary-chunked cross entropy (targets of packed rows: tests/eval/test_perplexity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax.train import loss


@pytest.mark.parametrize("chunk", [7, 16, 64])
def test_chunked_cross_entropy_equals_full(chunk):
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(2, 6, 12)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(12, 50)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 50, (2, 6)))
  full = loss.cross_entropy(hidden, head, targets, 0)
  chunked = loss.cross_entropy(hidden, head, targets, chunk)
  logits = np.asarray(hidden) @ np.asarray(head)
  ref = jax.nn.logsumexp(logits, -1) - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(full[0], ref, rtol=1e-5)
  for a, b in zip(chunked, full):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  grad = lambda c: jax.grad(lambda h, w: jnp.sum(loss.cross_entropy(h, w, targets, c)[0]), argnums=(0, 1))(hidden, head)
  for a, b in zip(grad(chunk), grad(0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_loss_never_materializes_full_logits():
  """The compiled chunked loss holds far less temporary memory than the full one."""
  hidden = jax.ShapeDtypeStruct((1, 2048, 64), jnp.float32)
  head = jax.ShapeDtypeStruct((64, 32768), jnp.float32)
  targets = jax.ShapeDtypeStruct((1, 2048), jnp.int32)

  def temp_bytes(chunk):
    f = jax.jit(jax.grad(lambda h, w, t: jnp.sum(loss.cross_entropy(h, w, t, chunk)[0]), argnums=(0, 1)))
    return f.lower(hidden, head, targets).compile().memory_analysis().temp_size_in_bytes

  full_logits = 2048 * 32768 * 4
  assert temp_bytes(0) >= full_logits
  assert temp_bytes(2048) < full_logits / 2
  assert temp_bytes(1024) < temp_bytes(2048)  # memory follows the chunk, not the vocabulary
