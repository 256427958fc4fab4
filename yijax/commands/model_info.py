"""yijax model-info --config=configs/models/yi_6b.py"""

from __future__ import annotations

from yijax import configlib, models
from yijax.commands import check_config_overrides, define_config
from yijax.errors import UsageError


def define_flags(fv, argv):
  define_config(fv, argv, presets="model")


check_argv = check_config_overrides


def _human(n: float) -> str:
  for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n / size:.2f}{unit}"
  return str(int(n))


def run(fv, args):
  if fv.config is None:
    raise UsageError("--config is required, e.g. --config=configs/models/yi_6b.py")
  config = configlib.model_config(fv.config)
  counts = models.param_count(config)
  print(f"layers {config.num_layers}  hidden {config.hidden_size}  heads {config.num_heads} "
        f"(kv {config.num_kv_heads}, head_dim {config.resolved_head_dim})  mlp {config.mlp_dim}  "
        f"vocab {config.vocab_size}")
  print(f"parameters      {counts['total']:>16,}  ({_human(counts['total'])})")
  print(f"  embeddings    {counts['embedding']:>16,}  ({_human(counts['embedding'])}; "
        f"{'tied' if config.tie_embeddings else 'untied'} input + output)")
  print(f"  per layer     {counts['per_layer']:>16,}  ({_human(counts['per_layer'])}; mean over layers)")
  if config.is_moe:
    print(f"active          {counts['active']:>16,}  ({_human(counts['active'])}; top-{config.num_experts_per_token} "
          f"of {config.num_experts} routed experts + {config.num_shared_experts} shared)")
  print(f"  non-embedding {counts['non_embedding']:>16,}  ({_human(counts['non_embedding'])})")
  for dtype, size in counts["bytes"].items():
    print(f"bytes {dtype:<9} {size:>16,}  ({size / 2**30:.2f} GiB)")
  return 0
