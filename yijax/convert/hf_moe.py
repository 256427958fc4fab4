"""Hugging Face Mixtral / Qwen2-MoE safetensors <-> yijax MoE parameters.

One family of the converter registry (`yijax/convert/hf.py`): `MixtralForCausalLM` and
`Qwen2MoeForCausalLM`; attention, norms, embeddings and the dense layers'
MLPs use the Llama rules of `common.tensor_rules`. Expert tensors come in two
layouts, detected per checkpoint from the tensor names:

  per expert (hub checkpoints, and what transformers 5.x `save_pretrained` writes):
    Mixtral    model.layers.{i}.block_sparse_moe.experts.{j}.w1/w3.weight [f, d] (gate/up), w2.weight [d, f]
    Qwen2-MoE  model.layers.{i}.mlp.experts.{j}.{gate,up}_proj.weight [f, d], down_proj.weight [d, f]
  fused (transformers 5.x modules' own state dict):
    model.layers.{i}.mlp.experts.gate_up_proj [E, 2f, d] (gate rows first), experts.down_proj [E, d, f]

and map onto wi_gate / wi_up [E, d, f] and wo [E, f, d]. The router
`gate.weight` [E, d] is `mlp/router` [d, E]; Qwen2-MoE's shared expert is
`mlp/shared_experts/*` and its `shared_expert_gate.weight` [1, d] is
`mlp/shared_expert_gate/kernel` [d, 1]. Export writes the per-expert layout
(it is what transformers 5.x itself saves and what other tools read).

Layer placement: HF layer i is entry `index` on the leading axis of a scanned
block (`layer_slots`): `layers` for the first dense layers, then `moe_layers`,
whose steps are PeriodBlocks (`block_0..block_{n-1}`) when moe_layer_interval = n > 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator

import numpy as np

from yijax.convert import common, llama
from yijax.convert.common import ConversionError
from yijax.models.config import ConfigError, ModelConfig

ARCHITECTURES = {"MixtralForCausalLM": "mixtral", "Qwen2MoeForCausalLM": "qwen2_moe"}
EXPERT_NAMES = {"mixtral": ("w1", "w3", "w2"), "qwen2_moe": ("gate_proj", "up_proj", "down_proj")}
_REFUSED = {"DeepseekV3ForCausalLM": "deepseek_v3"}


def matches(hf: dict[str, Any]) -> bool:
  """Whether an HF config.json is one of the MoE families this module handles (or refuses by name)."""
  archs = hf.get("architectures") or []
  families = set(ARCHITECTURES.values()) | set(_REFUSED.values())
  return any(a in ARCHITECTURES or a in _REFUSED for a in archs) or hf.get("model_type") in families


def handles(config: ModelConfig) -> bool:
  """Whether a yijax model exports as an MoE family (Mixtral / Qwen2-MoE)."""
  return config.is_moe


def _family(hf: dict[str, Any], source: str) -> str:
  archs = hf.get("architectures") or []
  family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None) or hf.get("model_type")
  if family == "deepseek_v3" or any(a in _REFUSED for a in archs):
    raise ConversionError(
        f"{source}: DeepseekV3ForCausalLM uses multi-head latent attention (MLA), which yijax does not "
        "have; only its router is reproduced (router_type='sigmoid', see hf_moe.deepseek_v3_moe_fields)")
  return family


# ----------------------------------------------------------------------------- config


def _require(hf: dict[str, Any], source: str, *fields: str) -> None:
  missing = [k for k in fields if hf.get(k) is None]
  if missing:
    raise ConversionError(f"{source}: missing field(s) {missing} for a {hf.get('model_type')} MoE model")


def _moe_pattern(hf: dict[str, Any], source: str) -> tuple[int, int]:
  """(first_dense_layers, moe_layer_interval) equal to Qwen2-MoE's decoder_sparse_step / mlp_only_layers."""
  layers, step = hf["num_hidden_layers"], hf.get("decoder_sparse_step") or 1
  dense_only = set(hf.get("mlp_only_layers") or [])
  moe = [i not in dense_only and (i + 1) % step == 0 for i in range(layers)]
  if not any(moe):
    raise ConversionError(f"{source}: decoder_sparse_step={step} and mlp_only_layers={sorted(dense_only)} "
                          "leave no MoE layer; convert a dense model as LlamaForCausalLM instead")
  for first in range(layers):
    for interval in range(1, layers - first + 1):
      if (layers - first) % interval:
        continue
      if moe == [i >= first and (i - first) % interval == interval - 1 for i in range(layers)]:
        return first, interval
  raise ConversionError(
      f"{source}: MoE layers {[i for i in range(layers) if moe[i]]} of {layers} (decoder_sparse_step={step}, "
      f"mlp_only_layers={sorted(dense_only)}) are not a pattern yijax can scan: it needs k dense layers, then "
      "every n-th layer MoE with the MoE layers ending the model (num_layers - k a multiple of n)")


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
  """ModelConfig of a Mixtral or Qwen2-MoE config.json; refuses what yijax cannot compute exactly."""
  family = _family(hf, source)
  if family == "mixtral":
    _require(hf, source, "num_local_experts", "num_experts_per_tok", "intermediate_size")
    window = hf.get("sliding_window")
    if window is not None and window < hf.get("max_position_embeddings", 4096):
      raise ConversionError(f"{source}: sliding_window={window} < max_position_embeddings="
                            f"{hf.get('max_position_embeddings')}: yijax attention has no sliding window")
    moe = dict(num_experts=hf["num_local_experts"], expert_mlp_dim=hf["intermediate_size"],
               router_type="topk_softmax", norm_topk_prob=True)
    mlp_dim = hf["intermediate_size"]
  else:
    _require(hf, source, "num_experts", "num_experts_per_tok", "moe_intermediate_size",
             "shared_expert_intermediate_size", "intermediate_size", "num_hidden_layers")
    if hf.get("qkv_bias", True):
      raise ConversionError(
          f"{source}: qkv_bias={hf.get('qkv_bias', 'absent (transformers default: true)')}: Qwen2-MoE q/k/v "
          "projection biases (as in Qwen1.5-MoE-A2.7B) are not representable, yijax attention has no bias")
    sliding = [t for t in hf.get("layer_types") or [] if t != "full_attention"]
    if hf.get("use_sliding_window") or sliding:
      raise ConversionError(f"{source}: use_sliding_window={hf.get('use_sliding_window')} / layer_types "
                            f"{sorted(set(sliding))}: yijax attention has no sliding window")
    if hf["shared_expert_intermediate_size"] <= 0:
      raise ConversionError(f"{source}: shared_expert_intermediate_size="
                            f"{hf['shared_expert_intermediate_size']} must be positive")
    first, interval = _moe_pattern(hf, source)
    moe = dict(num_experts=hf["num_experts"], expert_mlp_dim=hf["moe_intermediate_size"], num_shared_experts=1,
               shared_expert_mlp_dim=hf["shared_expert_intermediate_size"], shared_expert_gate=True,
               first_dense_layers=first, moe_layer_interval=interval, router_type="softmax_topk",
               norm_topk_prob=bool(hf.get("norm_topk_prob", False)))
    mlp_dim = hf["intermediate_size"]
  base = llama.config_from_hf({**hf, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                               "intermediate_size": mlp_dim}, source)
  config = base.replace(num_experts_per_token=hf["num_experts_per_tok"], **moe)
  try:
    return config.validate()
  except ConfigError as e:
    raise ConversionError(f"{source}: {e}") from None


def hf_family(config: ModelConfig) -> str:
  """The transformers family that computes exactly this yijax MoE model, or an error naming the field."""
  def refuse(why):
    raise ConversionError(f"cannot export this MoE model to Mixtral or Qwen2-MoE: {why}")

  if "S" in getattr(config, "attention_pattern", "") or getattr(config, "kv_share_group", 1) > 1:
    refuse("sliding-window layers (model.attention_pattern) and shared K/V (model.kv_share_group) are not "
           "exported")
  if config.router_type == "sigmoid":
    refuse("model.router_type='sigmoid' (DeepSeek-V3 routing) has no GQA transformers architecture")
  if config.num_expert_groups > 1 and config.top_expert_groups < config.num_expert_groups:
    refuse(f"group-limited routing (model.num_expert_groups={config.num_expert_groups}, "
           f"model.top_expert_groups={config.top_expert_groups}) is neither Mixtral's nor Qwen2-MoE's")
  if config.routed_scaling_factor != 1.0:
    refuse(f"model.routed_scaling_factor={config.routed_scaling_factor} must be 1")
  normalised = config.router_type == "topk_softmax" or config.norm_topk_prob
  if config.num_shared_experts:
    if not config.shared_expert_gate:
      refuse("Qwen2-MoE's shared expert has a sigmoid gate: needs model.shared_expert_gate=True")
    return "qwen2_moe"
  if config.first_dense_layers or config.moe_layer_interval != 1:
    refuse(f"Mixtral has only MoE layers (model.first_dense_layers={config.first_dense_layers}, "
           f"model.moe_layer_interval={config.moe_layer_interval}), and Qwen2-MoE needs shared experts")
  if not normalised:
    refuse("Mixtral renormalises its top-k weights: needs router_type='topk_softmax' or norm_topk_prob=True")
  return "mixtral"


def config_to_hf(config: ModelConfig, dtype: str, bos_id: int = 1, eos_id: int = 2) -> dict[str, Any]:
  family = hf_family(config)
  out = llama.config_to_hf(config, dtype, bos_id, eos_id)
  for key in ("attention_bias", "mlp_bias"):
    out.pop(key)
  normalised = config.router_type == "topk_softmax" or config.norm_topk_prob
  if family == "mixtral":
    out.update(architectures=["MixtralForCausalLM"], model_type="mixtral", intermediate_size=config.expert_mlp_dim,
               num_local_experts=config.num_experts, num_experts_per_tok=config.num_experts_per_token,
               sliding_window=None)
    return out
  interval, first = config.moe_layer_interval, config.first_dense_layers
  if first % interval == 0:  # decoder_sparse_step = n already puts the MoE layers where yijax has them
    step, mlp_only = interval, [i for i in range(first) if (i + 1) % interval == 0]
  else:
    step, mlp_only = 1, [i for i in range(config.num_layers) if not config.layer_is_moe(i)]
  out.update(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe", num_experts=config.num_experts,
             num_experts_per_tok=config.num_experts_per_token, moe_intermediate_size=config.expert_mlp_dim,
             shared_expert_intermediate_size=config.num_shared_experts * config.shared_expert_mlp_dim,
             norm_topk_prob=normalised, decoder_sparse_step=step, mlp_only_layers=mlp_only, qkv_bias=False,
             use_sliding_window=False)
  return out


def deepseek_v3_moe_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """ModelConfig MoE fields computing DeepseekV3's MoE (sigmoid scores, e_score_correction_bias as
  mlp/selection_bias, groups scored by their top-2 sum, norm_topk_prob, routed_scaling_factor)."""
  return dict(
      num_experts=hf["n_routed_experts"], num_experts_per_token=hf["num_experts_per_tok"],
      num_shared_experts=hf.get("n_shared_experts") or 0, expert_mlp_dim=hf["moe_intermediate_size"],
      shared_expert_mlp_dim=hf["moe_intermediate_size"], first_dense_layers=hf.get("first_k_dense_replace") or 0,
      router_type="sigmoid", norm_topk_prob=bool(hf.get("norm_topk_prob")),
      routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
      num_expert_groups=hf.get("n_group") or 1, top_expert_groups=hf.get("topk_group") or 1,
  )


# ----------------------------------------------------------------------------- tensor plan


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor and the yijax array slices it fills: (path, index) per target."""

  hf_name: str
  hf_shape: tuple[int, ...]
  targets: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]
  to_yijax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_hf: Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a checkpoint names its MoE tensors: the module prefix and fused or per-expert experts."""

  moe_prefix: str = "mlp"
  fused: bool = False


def detect_layout(family: str, names: list[str]) -> Layout:
  prefix = "block_sparse_moe" if family == "mixtral" and any(".block_sparse_moe." in n for n in names) else "mlp"
  return Layout(prefix, any(n.endswith((".experts.gate_up_proj", ".experts.down_proj")) for n in names))


def export_layout(family: str) -> Layout:
  return Layout("block_sparse_moe" if family == "mixtral" else "mlp", fused=False)


def layer_slots(config: ModelConfig) -> list[tuple[tuple[str, ...], int]]:
  """Per HF layer: (path of the scanned block holding it, its index on that stack's leading axis),
  read off `transformer.layer_stacks` so it follows however the model groups its layers."""
  from yijax.models.transformer import PeriodBlock, layer_stacks

  slots = []
  for name, block, _, length, step in layer_stacks(config):
    per_step = step if isinstance(step, int) else len(step)  # layers per scan step (or their specs)
    for layer in range(length * per_step):
      index, position = divmod(layer, per_step)
      slots.append(((name, f"block_{position}") if block is PeriodBlock else (name,), index))
  return slots


def _t(w):
  return w.T


def _swap(w):  # [E, a, b] <-> [E, b, a]
  return w.transpose(0, 2, 1)


def _split_gate_up(w, f):  # [E, 2f, d] -> wi_gate, wi_up [E, d, f]
  return _swap(w[:, :f]), _swap(w[:, f:])


def _join_gate_up(gate, up):
  return np.concatenate([_swap(gate), _swap(up)], axis=1)


def _one(fn):
  return lambda w: (fn(w),)


def _moe_entries(config: ModelConfig, family: str, layout: Layout, layer: int,
                 mlp: tuple[str, ...], index: int) -> list[Entry]:
  d, e, f = config.hidden_size, config.num_experts, config.expert_mlp_dim
  p = f"model.layers.{layer}.{layout.moe_prefix}."
  at = lambda *path, extra=(): ((mlp + path, (index,) + extra),)  # noqa: E731
  out = [Entry(p + "gate.weight", (e, d), at("router"), _one(_t), _t)]
  if config.num_shared_experts:
    s = config.num_shared_experts * config.shared_expert_mlp_dim
    for name, shape in (("gate_proj", (s, d)), ("up_proj", (s, d)), ("down_proj", (d, s))):
      out.append(Entry(p + f"shared_expert.{name}.weight", shape, at("shared_experts", name, "kernel"), _one(_t), _t))
    out.append(Entry(p + "shared_expert_gate.weight", (1, d), at("shared_expert_gate", "kernel"), _one(_t), _t))
  if layout.fused:
    out.append(Entry(p + "experts.gate_up_proj", (e, 2 * f, d), at("wi_gate") + at("wi_up"),
                     functools.partial(_split_gate_up, f=f), _join_gate_up))
    out.append(Entry(p + "experts.down_proj", (e, d, f), at("wo"), _one(_swap), _swap))
    return out
  for j in range(e):
    for name, target, shape in zip(EXPERT_NAMES[family], ("wi_gate", "wi_up", "wo"), ((f, d), (f, d), (d, f))):
      out.append(Entry(p + f"experts.{j}.{name}.weight", shape, at(target, extra=(j,)), _one(_t), _t))
  return out


def plan(config: ModelConfig, family: str, layout: Layout) -> list[Entry]:
  """Every HF tensor of the model, in file order: embeddings, then layer by layer, then the head."""
  shapes = common.expected_hf_shapes(config)
  rules = common.tensor_rules(config)

  def from_rule(rule, name, path, index):
    return Entry(name, shapes[name], ((path, index),), lambda w: (rule.to_yijax(w, config),),
                 lambda k: rule.to_hf(k, config))

  out = [from_rule(r, r.hf_name, r.path, ()) for r in rules if not r.layered and r.path[0] == "embed"]
  for layer, (block, index) in enumerate(layer_slots(config)):
    moe = config.layer_is_moe(layer)
    for rule in rules:
      if rule.layered and not (moe and rule.path[1] == "mlp"):
        out.append(from_rule(rule, rule.hf_name.format(i=layer), block + rule.path[1:], (index,)))
    if moe:
      out.extend(_moe_entries(config, family, layout, layer, block + ("mlp",), index))
  out += [from_rule(r, r.hf_name, r.path, ()) for r in rules if not r.layered and r.path[0] != "embed"]
  return out


def param_shapes(config: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{path: shape} of the yijax parameter tree (abstract: nothing is allocated)."""
  import jax

  from yijax import models

  tree = jax.eval_shape(lambda: models.init_params(config, jax.random.key(0)))
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in flat}


# ----------------------------------------------------------------------------- HF -> yijax


def _shape_hint(name: str) -> str:
  if name in ("model.embed_tokens.weight", "lm_head.weight"):
    return "vocab_size"
  if ".experts." in name:
    return "num_experts / num_local_experts, moe_intermediate_size / intermediate_size"
  return "shape fields"


def read_hf(hf_dir: str, hf: dict[str, Any], source: str, dtype: str | None = None) -> tuple[ModelConfig, dict]:
  """(config, numpy parameter pytree) of a Mixtral / Qwen2-MoE directory, checked and streamed tensor by tensor."""
  config = config_from_hf(hf, source)
  family = _family(hf, source)
  reader = common.SafetensorsReader(hf_dir)
  available = [n for n in reader.names() if not n.endswith(common.IGNORED_SUFFIXES)]
  layout = detect_layout(family, available)
  entries = plan(config, family, layout)
  expected = {entry.hf_name: entry for entry in entries}
  unexpected = sorted(set(available) - set(expected))
  if unexpected:
    raise ConversionError(
        f"{hf_dir}: unexpected tensor(s) {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} for a "
        f"{config.num_layers}-layer {family} model ({'fused' if layout.fused else 'per-expert'} experts, "
        f"tie_word_embeddings={config.tie_embeddings})")
  present = set(available)
  missing = [n for n in expected if n not in present]
  if missing:
    raise ConversionError(f"{hf_dir}: missing tensor {missing[0]} (expected shape {expected[missing[0]].hf_shape})"
                          + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
  shapes = param_shapes(config)
  arrays: dict[tuple[str, ...], np.ndarray] = {}
  for entry in entries:
    tensor = reader.get(entry.hf_name)
    if tuple(tensor.shape) != entry.hf_shape:
      raise ConversionError(f"tensor {entry.hf_name}: expected shape {entry.hf_shape} from config.json, found "
                            f"{tuple(tensor.shape)} (check config.json's {_shape_hint(entry.hf_name)})")
    for (path, index), value in zip(entry.targets, entry.to_yijax(tensor)):
      if dtype:
        value = value.astype(common.np_dtype(dtype))
      if path not in arrays:
        arrays[path] = np.empty(shapes[path], value.dtype)
      arrays[path][index] = value
  unfilled = sorted(set(shapes) - set(arrays))
  if unfilled:  # a plan that misses a parameter is a bug here, not a bad checkpoint
    raise ConversionError(f"internal: no HF tensor maps onto yijax parameter(s) {['/'.join(p) for p in unfilled]}")
  params: dict = {}
  for path, value in arrays.items():
    common.set_path(params, path, value)
  if dtype:
    config = config.replace(param_dtype=dtype)
  return config, params


# ----------------------------------------------------------------------------- yijax -> HF


def hf_tensors(config: ModelConfig, params: dict, out_dtype: str) -> Iterator[tuple[str, np.ndarray]]:
  """(name, tensor) in the per-expert layout, one at a time. Every parameter of the checkpoint
  must have its tensor (nothing silently dropped) and every tensor its parameter."""
  import jax

  family = hf_family(config)
  entries = plan(config, family, export_layout(family))
  stored = {tuple(str(k.key) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  covered = {path for entry in entries for path, _ in entry.targets}
  for missing, why in ((stored - covered, "have no {family} tensor; exporting would drop them"),
                       (covered - stored, "are missing from the checkpoint, which does not match its config")):
    if missing:
      raise ConversionError(f"yijax parameter(s) {sorted('/'.join(p) for p in missing)} {why.format(family=family)}")
  for entry in entries:
    parts = [np.asarray(common.get_path(params, path))[index] for path, index in entry.targets]
    yield entry.hf_name, np.ascontiguousarray(entry.to_hf(*parts).astype(common.np_dtype(out_dtype)))
