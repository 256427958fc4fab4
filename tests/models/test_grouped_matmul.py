"""Grouped matmul implementations against jax.lax.ragged_dot, and the MoE model with each
dropless `moe_impl` against the dense reference (the Pallas kernels in interpret mode)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax import models, sharding
from yijax.models import grouped_matmul as gm
from yijax.models.config import ModelConfig

SMALL_TILES = gm.PallasConfig(block_m=16, block_n=16, block_k=16, block_dw=16)
IMPLS = {"tokamax": {}, "padded": {"block_size": 8}, "pallas": {"pallas_config": SMALL_TILES}}
# (m, k, n, group sizes): empty groups, rows past the sum, a group spanning many
# blocks, sizes and k, n that are not multiples of the tile sizes
CASES = [
    (70, 24, 20, [10, 0, 17, 3, 0, 25]),
    (48, 32, 16, [0, 48, 0]),
    (37, 16, 40, [5, 1, 0, 9, 2, 0, 7, 1]),
]


def _inputs(m, k, n, sizes, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(m, k)), dtype)
  w = jnp.asarray(rng.normal(size=(len(sizes), k, n)) / np.sqrt(k), dtype)
  dy = jnp.asarray(rng.normal(size=(m, n)), dtype)
  return x, w, jnp.asarray(sizes, jnp.int32), dy


def _value_and_grads(impl, x, w, sizes, dy, **kwargs):
  @jax.jit
  def run(x, w, sizes, dy):
    y, vjp = jax.vjp(lambda x, w: gm.gmm(x, w, sizes, impl, **kwargs), x, w)
    return (y, *vjp(dy))
  return run(x, w, sizes, dy)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_every_implementation_equals_ragged_dot(impl):
  for case, (m, k, n, sizes) in enumerate(CASES):
    x, w, sizes, dy = _inputs(m, k, n, sizes, seed=case)
    got = _value_and_grads(impl, x, w, sizes, dy, **IMPLS[impl])
    want = _value_and_grads("ragged", x, w, sizes, dy)
    for name, a, b in zip(("y", "dx", "dw"), got, want):
      assert not np.isnan(np.asarray(a)).any(), (impl, case, name)  # interpret mode fills unwritten with NaN
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{impl} case {case} {name}")
    tail = int(np.sum(np.asarray(sizes)))
    assert float(jnp.abs(got[0][tail:]).max(initial=0.0)) == 0.0


def test_pallas_bf16_accumulates_in_float32():
  x, w, sizes, _ = _inputs(64, 32, 32, [30, 0, 21, 13], dtype=jnp.bfloat16)
  got = jax.jit(lambda x, w, s: gm.gmm(x, w, s, "pallas", pallas_config=SMALL_TILES))(x, w, sizes)
  assert got.dtype == jnp.bfloat16
  want = jax.lax.ragged_dot(x.astype(jnp.float32), w.astype(jnp.float32), sizes)
  assert float(jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want)) < 1e-2


@pytest.mark.parametrize("block_m", [16, 128])
def test_pallas_tiles_cover_every_row_once(block_m):
  rng = np.random.default_rng(block_m)
  tiles = jax.jit(gm._tiles, static_argnums=(1, 2))
  for _ in range(8):
    g, m = int(rng.integers(1, 12)), 300
    cut = np.sort(rng.integers(0, m + 1, g))  # cumulative ends, the last may stop short of m
    sizes = np.diff(np.concatenate([[0], cut])).astype(np.int32)
    group, block, lo, hi = map(np.asarray, tiles(jnp.asarray(np.pad(sizes, (0, 12 - g))), m, block_m))
    covered = np.zeros(m, int)
    row_group = np.searchsorted(np.cumsum(np.pad(sizes, (0, 12 - g))), np.arange(m), side="right")  # 12 = past the sum
    for t in range(len(group)):
      if hi[t] > lo[t]:
        assert block[t] * block_m <= lo[t] and hi[t] <= (block[t] + 1) * block_m
        assert (row_group[lo[t]:hi[t]] == group[t]).all()
        covered[lo[t]:hi[t]] += 1
    assert (covered == 1).all()


def test_padded_layout_round_trips_rows():
  sizes = jnp.asarray([5, 0, 12, 1, 0, 3], jnp.int32)
  block_group, src, valid, dst, row_valid = map(np.asarray, jax.jit(gm._padded_layout, static_argnums=(1, 2))(sizes, 25, 4))
  assert len(src) % 4 == 0 and len(src) >= 25 + 6 * 3
  np.testing.assert_array_equal(row_valid, np.arange(25) < 21)
  np.testing.assert_array_equal(src[dst[:21]], np.arange(21))
  assert valid[dst[:21]].all() and valid.sum() == 21
  assert (np.diff(block_group) >= 0).all()


def test_pallas_kernels_lower_to_triton_for_cuda():
  """Lowering needs no GPU: every op in the three kernels has a Triton lowering."""
  x, w = jax.ShapeDtypeStruct((1000, 64), jnp.bfloat16), jax.ShapeDtypeStruct((5, 64, 48), jnp.bfloat16)
  sizes, dy = jax.ShapeDtypeStruct((5,), jnp.int32), jax.ShapeDtypeStruct((1000, 48), jnp.bfloat16)

  def forward_backward(x, w, sizes, dy):
    y, vjp = jax.vjp(lambda x, w: gm.gmm(x, w, sizes, "pallas", interpret=False), x, w)
    return (y, *vjp(dy))

  text = jax.jit(forward_backward).trace(x, w, sizes, dy).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("xla.gpu.triton") == 3  # y, dx (transposed weights), dw


@pytest.mark.parametrize("impl", ["tokamax_triton", "tokamax_mosaic"])
def test_gpu_only_tokamax_kernels_say_so_off_gpu(impl):
  if jax.default_backend() == "gpu":
    pytest.skip("runs on the GPU")
  x, w, sizes, _ = _inputs(8, 16, 16, [4, 4])
  with pytest.raises(NotImplementedError, match=impl):
    gm.gmm(x, w, sizes, impl)


def test_tokamax_without_parsed_absl_flags_names_the_fix():
  from absl import flags

  from yijax.errors import ConfigError

  x, w, sizes, _ = _inputs(8, 16, 16, [4, 4])
  flags.FLAGS.unparse_flags()
  try:
    with pytest.raises(ConfigError, match="mark_as_parsed"):
      gm.gmm(x, w, sizes, "tokamax")
    assert not flags.FLAGS.is_parsed()  # the library left the global flags as they were
  finally:
    flags.FLAGS.mark_as_parsed()


MOE = ModelConfig(vocab_size=61, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=48,
                  rope_theta=10000.0, max_seq_len=32, num_experts=8, num_experts_per_token=2,
                  num_shared_experts=1, expert_mlp_dim=16, shared_expert_mlp_dim=16, first_dense_layers=0)


@pytest.fixture(scope="module")
def moe_setup():
  params = models.init_params(MOE, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 61, (8, 6)), jnp.int32)
  return params, tokens, jax.jit(lambda p, t: models.apply(MOE.replace(moe_impl="dense"), p, t))(params, tokens)


@pytest.mark.parametrize("impl", ["tokamax", "padded", "pallas"])
def test_moe_model_with_each_dropless_impl_equals_dense(moe_setup, impl):
  params, tokens, reference = moe_setup
  logits = jax.jit(lambda p, t: models.apply(MOE.replace(moe_impl=impl), p, t))(params, tokens)
  np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)


def test_moe_model_gradients_through_the_pallas_kernels(moe_setup):
  params, tokens, _ = moe_setup

  def grads(impl):
    loss = lambda p: jnp.mean(jax.nn.log_softmax(models.apply(MOE.replace(moe_impl=impl), p, tokens))[..., 0])
    return jax.jit(jax.grad(loss))(params)

  got, want = grads("pallas"), grads("ragged")
  for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_expert_parallel_all_to_all_with_the_pallas_kernel(moe_setup):
  """The all-to-all path feeds buffers with rows past the group-size sum: zeros out."""
  params, tokens, reference = moe_setup
  mesh = sharding.make_mesh({"expert": 4, "data": 2})
  with sharding.use_mesh(mesh):
    logits = jax.jit(lambda p, t: models.apply(MOE.replace(moe_impl="pallas"), p, t))(params, tokens)
  np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
