"""Attention kernels against a plain per-head reference, masks, GQA shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax.models import attention


def _reference(q, k, v, mask):
  """Per-head loop in float64 numpy."""
  q, k, v, mask = (np.asarray(a, np.float64) if a.dtype != bool else np.asarray(a) for a in (q, k, v, mask))
  b, s, h, d = q.shape
  group = h // k.shape[2]
  out = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      scores = q[bi, :, hi] @ k[bi, :, hi // group].T / np.sqrt(d)
      scores = np.where(mask[bi], scores, -np.inf)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      out[bi, :, hi] = probs @ v[bi, :, hi // group]
  return out


def _qkv(b, s, h, kv, d, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=shape), dtype) for shape in
               ((b, s, h, d), (b, s, kv, d), (b, s, kv, d)))


def _segments(b, s, seed=0):
  rng = np.random.default_rng(seed)
  segs = np.zeros((b, s), np.int32)
  for row in segs:
    cuts = np.sort(rng.choice(np.arange(1, s), size=3, replace=False))
    for i, c in enumerate(cuts):
      row[c:] = i + 1
  return jnp.asarray(segs + 1)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_xla_attention_matches_reference_with_segments(heads, kv_heads):
  q, k, v = _qkv(2, 24, heads, kv_heads, 8)
  segs = _segments(2, 24)
  index = jnp.broadcast_to(jnp.arange(24), (2, 24))
  mask = attention.causal_segment_mask(index, index, segs, segs)
  out = attention.xla_attention(q, k, v, mask, 8 ** -0.5)
  np.testing.assert_allclose(out, _reference(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_segment_mask_blocks_cross_document_attention():
  segs = jnp.asarray([[1, 1, 2, 2, 2, 0]])
  index = jnp.arange(6)[None]
  mask = np.asarray(attention.causal_segment_mask(index, index, segs, segs))[0]
  assert mask[3, 2] and mask[3, 3] and not mask[3, 1] and not mask[2, 0]
  assert not mask[1, 2]  # causal
  assert mask[5, 5] and not mask[5, 4]  # padding attends only to padding


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (2, 1)])
def test_splash_interpret_matches_xla(heads, kv_heads):
  """Pallas splash attention (interpret mode on CPU), forward and gradients."""
  q, k, v = _qkv(2, 256, heads, kv_heads, 64, seed=1)
  segs = _segments(2, 256, seed=2)
  index = jnp.broadcast_to(jnp.arange(256), (2, 256))
  mask = attention.causal_segment_mask(index, index, segs, segs)
  scale = 64 ** -0.5

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * jnp.cos(jnp.arange(64.0)))

  xla = lambda q, k, v: attention.xla_attention(q, k, v, mask, scale)
  splash = lambda q, k, v: attention.splash_attention(q, k, v, segs, scale)
  np.testing.assert_allclose(splash(q, k, v), xla(q, k, v), rtol=2e-5, atol=2e-5)
  g_xla = jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)
  g_splash = jax.grad(loss(splash), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_splash, g_xla):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_cudnn_matches_xla_on_gpu():
  q, k, v = _qkv(2, 256, 8, 2, 64, seed=3, dtype=jnp.bfloat16)
  segs = _segments(2, 256, seed=4)
  index = jnp.broadcast_to(jnp.arange(256), (2, 256))
  mask = attention.causal_segment_mask(index, index, segs, segs)
  ref = attention.xla_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask, 0.125)
  out = attention.cudnn_attention(q, k, v, segs, 0.125).astype(jnp.float32)
  assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 2e-2


def test_auto_picks_by_backend():
  assert attention.resolve_impl("auto") == {"gpu": "cudnn", "tpu": "splash"}.get(jax.default_backend(), "xla")
  assert attention.resolve_impl("xla") == "xla"


def test_splash_inside_the_scanned_model_matches_xla():
  from yijax import models
  from yijax.models import presets

  config = presets.get("tiny").replace(num_layers=2, attention_impl="splash")
  params = models.init_params(config, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 4000, (2, 128)), jnp.int32)
  segments = jnp.asarray(np.repeat([[1] * 50 + [2] * 78], 2, 0), jnp.int32)
  run = lambda cfg: jax.jit(lambda p: models.apply(cfg, p, tokens, segment_ids=segments))(params)
  np.testing.assert_allclose(run(config), run(config.replace(attention_impl="xla")), rtol=1e-4, atol=1e-4)
