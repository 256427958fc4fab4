"""Checksums of what a checkpoint stores, so corrupted weights are refused instead of loaded.

Every array leaf of a saved pytree (parameters, optimizer state) gets a 64-bit checksum of its stored
bits, computed on device at save time and again after a restore:

  words  the array's bits as uint32 words (16- and 8-bit dtypes widened, 64-bit split in two)
  sums   two sums over all words w_i of w_i * m(i) mod 2^32, with odd multipliers m(i) = 2i + 1 and
         (2654435761 i) | 1 of the word's position i

Integer sums are exact and order-free, so the checksum does not depend on how the array is sharded
or on the device count, and a change to any single word always changes both sums (an odd multiplier
is invertible mod 2^32). A mismatch names the checkpoint and the parameter.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yijax.errors import CheckpointError

FILE = "checksums.json"
GOLDEN = np.uint32(2654435761)


def _words(x: jax.Array) -> jax.Array:
  """The array's bits as uint32, one word per element (two for 64-bit dtypes, trailing axis)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
  raise CheckpointError(f"cannot checksum dtype {x.dtype}")


def _array_checksum(x: jax.Array) -> jax.Array:
  words = _words(x)
  if words.ndim == 0:
    words = words[None]
  # the linear position of every word, from per-axis iotas (no reshape, so no resharding)
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in range(words.ndim - 1, -1, -1):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride % 2**32)
    stride *= words.shape[axis]
  first = jnp.sum(words * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
  second = jnp.sum(words * ((index * GOLDEN) | jnp.uint32(1)), dtype=jnp.uint32)
  return jnp.stack([first, second])


@functools.lru_cache(maxsize=None)
def _jitted():
  return jax.jit(lambda tree: jax.tree.map(_array_checksum, tree))


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _host(value) -> np.ndarray:
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    value = value.addressable_data(0)  # the checksums are replicated: any shard is the whole value
  return np.asarray(value)


# below this many bytes on one device, the sums are computed on the host (no compile; small models, tests)
HOST_BYTES = 64 << 20


def _host_words(x) -> np.ndarray:
  """_words on the host: the same uint32 words, after JAX's dtype canonicalization of numpy inputs."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = np.asarray(x)
  x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)
  if x.dtype == np.bool_:
    x = x.astype(np.uint8)
  size = x.dtype.itemsize
  if size == 4:
    return x.view(np.uint32)
  if size in (1, 2):
    return x.view(np.dtype(f"uint{8 * size}")).astype(np.uint32)
  if size == 8:
    return np.ascontiguousarray(x).view(np.uint32).reshape(x.shape + (2,))
  raise CheckpointError(f"cannot checksum dtype {x.dtype}")


def _host_checksum(x) -> np.ndarray:
  words = _host_words(x).reshape(-1)
  index = np.arange(words.size, dtype=np.uint32)
  with np.errstate(over="ignore"):
    first = np.sum(words * (index * np.uint32(2) + np.uint32(1)), dtype=np.uint32)
    second = np.sum(words * ((index * GOLDEN) | np.uint32(1)), dtype=np.uint32)
  return np.stack([first, second])


def _on_host(arrays: dict) -> bool:
  small = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize if not _is_key(a) else 0
              for a in arrays.values()) <= HOST_BYTES
  local = all(not isinstance(a, jax.Array) or len(a.sharding.device_set) == 1 for a in arrays.values())
  return small and local


def checksums(tree: Any) -> dict[str, str]:
  """{"path/to/leaf": "xxxxxxxx-yyyyyyyy"} for every array leaf of `tree` (jax or numpy arrays)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  arrays = {_path_name(path): leaf for path, leaf in leaves if hasattr(leaf, "dtype") and hasattr(leaf, "shape")}
  if _on_host(arrays):
    sums = {name: _host_checksum(leaf) for name, leaf in arrays.items()}
  else:
    sums = _jitted()(arrays)
  out = {}
  for name, value in sums.items():
    first, second = (int(v) for v in _host(value))
    leaf = arrays[name]
    out[name] = f"{first:08x}-{second:08x}-{np.dtype(leaf.dtype).name if not _is_key(leaf) else 'key'}-" + \
        "x".join(str(d) for d in leaf.shape)
  return out


def _is_key(leaf) -> bool:
  return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def verify(tree: Any, expected: dict[str, str], where: str, item: str) -> None:
  """Raises CheckpointError naming `where` and the first leaf whose checksum differs from `expected`."""
  got = checksums(tree)
  missing = sorted(set(expected) - set(got))
  if missing:
    raise CheckpointError(f"{where}: {item} lacks {missing[:3]} that its checksums list; the checkpoint is damaged "
                          "or was written by another model")
  for name, value in got.items():
    if name in expected and expected[name] != value:
      raise CheckpointError(f"{where}: {item} {name} does not match the checksum written when it was saved: "
                            "its stored data is corrupted")


def read(path: str) -> dict | None:
  """The checksums file at `path` ({item: {leaf: checksum}}), None when there is none (older checkpoints)."""
  from yijax import paths

  if not paths.exists(path):
    return None
  text = paths.read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from None
