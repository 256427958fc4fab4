"""The model configuration: one frozen dataclass shared by every module.

`configs/models/*.py` build an `ml_collections.ConfigDict` with these fields;
`ModelConfig.from_dict` turns it into this typed, hashable value and
`validate()` checks it before anything is traced or compiled.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, Mapping

from yijax.errors import ConfigError  # noqa: F401 - re-exported: models.config.ConfigError

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "blockwise")
CONTEXT_PARALLEL = ("auto", "ring", "allgather", "none")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "minimal", "save_qkv_out", "offload")
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
ROUTER_TYPES = ("softmax_topk", "topk_softmax", "sigmoid")
# dropless grouped-matmul paths (yijax/models/grouped_matmul.py), then the einsum ones
GROUPED_MATMUL_IMPLS = ("ragged", "tokamax", "tokamax_triton", "tokamax_mosaic", "padded", "pallas")
MOE_IMPLS = GROUPED_MATMUL_IMPLS + ("capacity", "dense")
AUX_LOSS_TYPES = ("batch", "sequence")
DTYPES = ("float32", "bfloat16", "float16")



@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a Yi/Llama-architecture decoder."""

  vocab_size: int = 64000
  hidden_size: int = 4096
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 4
  head_dim: int = 0  # 0 = hidden_size // num_heads
  mlp_dim: int = 11008
  rope_theta: float = 5_000_000.0
  # RoPE scaling in Hugging Face terms: rope_type is one of ROPE_TYPES, and
  # rope_scaling_params holds its (key, value) pairs, e.g. (("factor", 4.0),).
  rope_type: str = "default"
  rope_scaling_params: tuple = ()
  max_seq_len: int = 4096
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  init_std: float = 0.02
  dtype: str = "float32"  # activations / compute
  param_dtype: str = "float32"
  attention_impl: str = "auto"
  # with the length sharded over the `sequence` mesh axis: ring | allgather attention;
  # auto = ring; none = leave the sharded kernel to XLA's partitioner
  context_parallel: str = "auto"
  remat_policy: str = "none"
  scan_unroll: int = 1                 # layers per step of the layer scan (compute only; >1 can help small models)
  # training only: dropout on the embeddings and on each block's attention and MLP outputs (GPT-2's residual
  # dropout); active only where the train step passes a dropout key (never in eval, scoring or generation)
  dropout_rate: float = 0.0
  # --- hybrid attention (Yi-Lightning) ---
  attention_pattern: str = ""          # per-layer kinds repeated over the layers: F = full, S = sliding
  sliding_window: int = 0              # tokens a sliding layer sees (itself included)
  kv_share_group: int = 1              # consecutive layers sharing the first one's K/V (1 = none)
  # --- mixture of experts (num_experts = 0: a dense model) ---
  num_experts: int = 0                 # routed experts per MoE layer
  num_experts_per_token: int = 2       # top-k
  num_shared_experts: int = 0          # always-on experts (fused into one SwiGLU)
  expert_mlp_dim: int = 0              # FFN width of each routed expert
  shared_expert_mlp_dim: int = 0       # FFN width of each shared expert
  shared_expert_gate: bool = False     # Qwen2-MoE: sigmoid(x @ w) scales the shared experts' output
  first_dense_layers: int = 0          # the first k layers are dense (mlp_dim)
  moe_layer_interval: int = 1          # after them every n-th layer is MoE (the others dense)
  router_type: str = "softmax_topk"    # softmax_topk | topk_softmax (Mixtral) | sigmoid (DeepSeek-V3)
  norm_topk_prob: bool = True          # renormalise the k routing weights to sum to 1
  routed_scaling_factor: float = 1.0   # multiplies the routing weights
  num_expert_groups: int = 1           # group-limited routing: experts in this many groups ...
  top_expert_groups: int = 1           # ... of which the best this many are eligible
  router_bias_update_rate: float = 0.0  # aux-loss-free balancing: selection-bias step per train step
  aux_loss_coef: float = 0.0           # load-balancing loss coefficient (per MoE layer, summed)
  aux_loss_type: str = "batch"         # batch (Switch/GShard) | sequence (per row, averaged)
  router_z_loss_coef: float = 0.0      # router z-loss coefficient
  capacity_factor: float = 0.0         # 0 = dropless; > 0: expert capacity (moe_impl=capacity)
  moe_impl: str = "ragged"             # dropless grouped matmul: ragged | tokamax[_triton|_mosaic] | padded | pallas;
                                       # capacity (einsum, drops overflow) | dense (reference)

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def is_moe(self) -> bool:
    return self.num_experts > 0

  def layer_is_moe(self, layer: int) -> bool:
    """Layers [0, first_dense_layers) are dense; after them every moe_layer_interval-th is MoE."""
    if not self.is_moe or layer < self.first_dense_layers:
      return False
    return (layer - self.first_dense_layers) % self.moe_layer_interval == self.moe_layer_interval - 1

  def layer_window(self, layer: int) -> int:
    """The sliding window of a layer (0 = full attention)."""
    if not self.attention_pattern:
      return 0
    return self.sliding_window if self.attention_pattern[layer % len(self.attention_pattern)] == "S" else 0

  def layer_spec(self, layer: int) -> tuple[bool, int, bool]:
    """(is MoE, sliding window, owns its K/V) of a layer."""
    return self.layer_is_moe(layer), self.layer_window(layer), layer % self.kv_share_group == 0

  @property
  def rope_scaling(self) -> dict[str, Any]:
    return dict(self.rope_scaling_params)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """Builds a config from a mapping (ConfigDict, dict); unknown keys are errors."""
    if hasattr(values, "to_dict"):
      values = values.to_dict()
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
      hints = {k: difflib.get_close_matches(k, names, n=3) for k in unknown}
      raise ConfigError(
          "unknown model config field(s): "
          + ", ".join(f"model.{k} (closest: {', '.join(h) or 'none'})" for k, h in hints.items())
      )
    kwargs = dict(values)
    scaling = kwargs.get("rope_scaling_params")
    if isinstance(scaling, Mapping):
      kwargs["rope_scaling_params"] = tuple(sorted(scaling.items()))
    elif scaling is not None:
      kwargs["rope_scaling_params"] = tuple(tuple(p) for p in scaling)
    return cls(**kwargs)

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["rope_scaling_params"] = dict(self.rope_scaling_params)
    return out

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "ModelConfig":
    return cls.from_dict(json.loads(text))

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def validate(self) -> "ModelConfig":
    """Raises ConfigError naming the field and the fix; returns self."""
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "mlp_dim", "scan_unroll"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
    if not isinstance(self.dropout_rate, (int, float)) or not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(
          f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads="
          f"{self.num_kv_heads}: grouped-query attention needs num_kv_heads to divide "
          f"num_heads (e.g. num_kv_heads in {_divisors(self.num_heads)})"
      )
    if not self.head_dim and self.hidden_size % self.num_heads:
      raise ConfigError(
          f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads="
          f"{self.num_heads}: choose num_heads in {_divisors(self.hidden_size)[:12]} "
          "or set model.head_dim explicitly"
      )
    if self.resolved_head_dim % 2:
      raise ConfigError(f"head dim {self.resolved_head_dim} must be even for rotary embeddings")
    for name, allowed in (
        ("attention_impl", ATTENTION_IMPLS),
        ("context_parallel", CONTEXT_PARALLEL),
        ("remat_policy", REMAT_POLICIES),
        ("rope_type", ROPE_TYPES),
        ("dtype", DTYPES),
        ("param_dtype", DTYPES),
    ):
      if getattr(self, name) not in allowed:
        raise ConfigError(f"model.{name}={getattr(self, name)!r} is not one of {allowed}")
    if self.is_moe:
      self._validate_moe()
    self._validate_attention_layout()
    if self.rope_theta <= 0:
      raise ConfigError(f"model.rope_theta must be positive, got {self.rope_theta}")
    return self

  def _validate_attention_layout(self) -> None:
    pattern, group = self.attention_pattern, self.kv_share_group
    if pattern and set(pattern) - {"F", "S"}:
      raise ConfigError(f"model.attention_pattern={pattern!r} may only hold F (full) and S (sliding)")
    if "S" in pattern and self.sliding_window <= 0:
      raise ConfigError("model.attention_pattern has sliding layers (S): set model.sliding_window > 0")
    if group < 1 or self.num_layers % group or (self.is_moe and self.first_dense_layers % group):
      raise ConfigError(f"model.kv_share_group={group} must divide model.num_layers={self.num_layers}"
                        + (" and model.first_dense_layers" if self.is_moe else ""))
    for start in range(0, self.num_layers, group):
      windows = {self.layer_window(i) for i in range(start, start + group)}
      if len(windows) > 1:
        raise ConfigError(f"layers {start}..{start + group - 1} share K/V (model.kv_share_group={group}) but mix "
                          f"full and sliding attention; align model.attention_pattern={pattern!r} with the groups")

  def _validate_moe(self) -> None:
    k, experts = self.num_experts_per_token, self.num_experts
    if not 1 <= k <= experts:
      raise ConfigError(f"model.num_experts_per_token={k} must be in [1, model.num_experts={experts}]")
    if self.expert_mlp_dim <= 0:
      raise ConfigError(f"model.expert_mlp_dim={self.expert_mlp_dim} must be positive for an MoE model")
    if self.num_shared_experts and self.shared_expert_mlp_dim <= 0:
      raise ConfigError("model.num_shared_experts > 0 needs a positive model.shared_expert_mlp_dim")
    if not 0 <= self.first_dense_layers <= self.num_layers:
      raise ConfigError(f"model.first_dense_layers={self.first_dense_layers} must be in [0, model.num_layers]")
    body = self.num_layers - self.first_dense_layers
    if self.moe_layer_interval < 1 or body % self.moe_layer_interval:
      raise ConfigError(
          f"model.num_layers - model.first_dense_layers = {body} layers must be a multiple of "
          f"model.moe_layer_interval={self.moe_layer_interval} (the layers are scanned in groups of it)")
    groups, top = self.num_expert_groups, self.top_expert_groups
    if groups < 1 or experts % groups or not 1 <= top <= groups:
      raise ConfigError(f"model.num_expert_groups={groups} must divide model.num_experts={experts} and "
                        f"model.top_expert_groups={top} must be in [1, {groups}]")
    if top * (experts // groups) < k:
      raise ConfigError(f"model.top_expert_groups={top} groups of {experts // groups} experts cannot hold "
                        f"model.num_experts_per_token={k} choices")
    for name, allowed in (("router_type", ROUTER_TYPES), ("moe_impl", MOE_IMPLS), ("aux_loss_type", AUX_LOSS_TYPES)):
      if getattr(self, name) not in allowed:
        raise ConfigError(f"model.{name}={getattr(self, name)!r} is not one of {allowed}")
    if self.router_bias_update_rate and self.router_type != "sigmoid":
      raise ConfigError("model.router_bias_update_rate (aux-loss-free balancing) needs model.router_type='sigmoid'")
    if self.moe_impl == "capacity" and self.capacity_factor <= 0:
      raise ConfigError("model.moe_impl='capacity' needs model.capacity_factor > 0 (e.g. 1.25)")
    if self.capacity_factor < 0:
      raise ConfigError(f"model.capacity_factor={self.capacity_factor} must be >= 0 (0 = dropless)")


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]
