"""Device meshes, logical-axis rules and the sharding of pytrees.

Every parameter and activation carries logical axis names (`batch`, `embed`,
`heads`, ...). A run's config maps them onto the mesh axes below with
`logical_axis_rules`, an ordered list of (logical, mesh axis or axes) pairs:
for each dimension the first rule whose mesh axes are still unused in that
array wins (flax's semantics), so `batch -> (data, fsdp, expert)` listed
before `embed -> fsdp` shards weights over fsdp and activations over
data x fsdp x expert (outside the MoE layers the expert axis is data-parallel).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from yijax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor", "sequence", "expert")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp", "expert")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("expert", "expert"),
    ("head_dim", None),
    ("layers", None),
)

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("yijax_mesh", default=None)


def normalize_rules(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  """Rules from config (lists, ConfigDict tuples) as a hashable tuple of pairs."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ConfigError(f"sharding rule {rule!r} must be a (logical, mesh axes) pair")
    logical, mesh_axes = rule
    if isinstance(mesh_axes, (list, tuple)):
      mesh_axes = tuple(mesh_axes)
      bad = [a for a in mesh_axes if a not in MESH_AXES]
    else:
      bad = [mesh_axes] if mesh_axes is not None and mesh_axes not in MESH_AXES else []
    if bad:
      raise ConfigError(f"sharding rule for {logical!r} names unknown mesh axes {bad}; known: {MESH_AXES}")
    out.append((str(logical), mesh_axes))
  return tuple(out)


def resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills in the one axis given as -1 and checks the product is the device count."""
  unknown = [k for k in mesh_shape if k not in MESH_AXES]
  if unknown:
    raise ConfigError(f"mesh axes {unknown} are unknown; mesh axes are {MESH_AXES}")
  shape = {axis: int(mesh_shape.get(axis, 1)) for axis in MESH_AXES}
  free = [axis for axis, size in shape.items() if size == -1]
  if len(free) > 1:
    raise ConfigError(f"only one mesh axis may be -1 (the rest of the devices); got {free}")
  bad = [a for a, s in shape.items() if s == 0 or s < -1]
  if bad:
    raise ConfigError(f"mesh.{bad[0]}={shape[bad[0]]} must be a positive size or -1")
  fixed = math.prod(s for s in shape.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(
          f"mesh axes {shape} leave {num_devices}/{fixed} devices for mesh.{free[0]}=-1; "
          f"make the fixed axes' product divide {num_devices}"
      )
    shape[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(
        f"mesh {dict((a, s) for a, s in shape.items() if s != 1) or shape} has {fixed} devices "
        f"but {num_devices} are present; set one mesh axis to -1 (e.g. --config.mesh.data=-1) "
        f"or make the product {num_devices}"
    )
  return shape


def make_mesh(mesh_shape: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """A mesh over all (or the given) devices with axes MESH_AXES."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_shape or {"data": -1}, len(devices))
  dims = tuple(shape[a] for a in MESH_AXES)
  try:
    from jax.experimental import mesh_utils

    device_array = mesh_utils.create_device_mesh(dims, devices=devices)
  except Exception:  # not every platform/topology is known to mesh_utils
    device_array = np.asarray(devices).reshape(dims)
  return Mesh(device_array, MESH_AXES)


def logical_to_spec(names: Sequence[str | None], rules=None) -> PartitionSpec:
  return nn.logical_to_mesh_axes(tuple(names), normalize_rules(rules))


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes that do not divide a dimension (that dimension is replicated)."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = []
  for dim, entry in zip(shape, entries):
    axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    kept, size = [], 1
    for axis in axes:
      if dim % (size * mesh.shape[axis]) == 0:
        kept.append(axis)
        size *= mesh.shape[axis]
    fitted.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return PartitionSpec(*fitted)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=None):
  """Activations traced inside are constrained by `constrain` on this mesh."""
  token = _ACTIVE.set((mesh, normalize_rules(rules)))
  try:
    yield mesh
  finally:
    _ACTIVE.reset(token)


def active_mesh() -> Mesh | None:
  active = _ACTIVE.get()
  return None if active is None else active[0]


def active_rules() -> tuple | None:
  """The logical-axis rules of the enclosing `use_mesh`, or None outside one."""
  active = _ACTIVE.get()
  return None if active is None else active[1]


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op outside `use_mesh`."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = fit_spec(logical_to_spec(names, rules), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def logical_specs(boxed_tree: Any) -> Any:
  """Logical PartitionSpecs (of axis names) of a tree of `nn.LogicallyPartitioned`."""
  return nn.get_partition_spec(boxed_tree)


def shardings_for(boxed_abstract: Any, mesh: Mesh, rules=None) -> Any:
  """NamedShardings for an abstract boxed tree (from `jax.eval_shape` of an init)."""
  rules = normalize_rules(rules)
  specs = logical_specs(boxed_abstract)
  shapes = nn.unbox(boxed_abstract)

  def one(spec, leaf):
    if not hasattr(leaf, "shape"):  # an empty placeholder (optax MaskedNode): no arrays, no sharding
      return leaf
    mesh_spec = logical_to_spec(tuple(spec), rules) if spec is not None else PartitionSpec()
    return NamedSharding(mesh, fit_spec(mesh_spec, leaf.shape, mesh))

  return jax.tree.map(one, specs, shapes, is_leaf=lambda s: isinstance(s, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh, rules=None, ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, length, ...] input batch."""
  spec = logical_to_spec(("batch", "length") + (None,) * (ndim - 2), rules)
  return NamedSharding(mesh, spec)


def shard_map(fn, mesh, in_specs, out_specs):
  """jax.shard_map without replication checks (jax.experimental's on versions before it moved)."""
  try:
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  except (AttributeError, TypeError):
    from jax.experimental.shard_map import shard_map as experimental

    return experimental(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def stacked(batch_sharding: NamedSharding) -> NamedSharding:
  """The sharding of [k, ...] stacks of batches sharded as `batch_sharding` (k steps in one call)."""
  return NamedSharding(batch_sharding.mesh, PartitionSpec(None, *batch_sharding.spec))


def barrier(name: str) -> None:
  """Waits for every process (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def maybe_initialize_distributed(
    enabled: bool | str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> bool:
  """Calls `jax.distributed.initialize` when the run asks for it.

  enabled: True, False or "auto" (initialize when a coordinator is given or
  when running on a TPU VM pod / SLURM job, where JAX finds its peers itself).
  Arguments left unset fall back to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
  and JAX_PROCESS_ID, so plain multi-node runs need no per-host config.
  """
  import os

  if jax.distributed.is_initialized() if hasattr(jax.distributed, "is_initialized") else False:
    return True
  if enabled == "auto":
    enabled = bool(coordinator_address) or any(
        k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS")
    )
  if not enabled:
    return False
  try:  # CPU processes need a collectives implementation (harmless on GPU/TPU)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):
    pass
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _env_int("JAX_NUM_PROCESSES", "the number of processes in the job, e.g. 2")
  if process_id is None:
    process_id = _env_int("JAX_PROCESS_ID", "this process's index, 0 to JAX_NUM_PROCESSES - 1")
  kwargs = {}
  if coordinator_address:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  if local_device_ids is not None:
    kwargs["local_device_ids"] = list(local_device_ids)
  jax.distributed.initialize(**kwargs)
  return True


def _env_int(name: str, meaning: str) -> int | None:
  """An integer environment variable, or None when unset; a bad value names the variable."""
  import os

  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{name}={value!r} is not an integer: set it to {meaning}") from None
