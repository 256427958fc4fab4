"""FLOP accounting for MFU: 6N + 12·L·d·S training FLOPs per token.

N counts every parameter a token passes through (embeddings included, as the
HF reference numbers in benchmarks/README.md do; for an MoE only the top-k
routed experts); 12·L·d·S is attention's score and value products
(forward + backward) at sequence length S, d = heads x head_dim.
"""

from __future__ import annotations

import jax

from yijax.models.config import ModelConfig

# dense bf16 peak FLOP/s by device kind (datasheet values)
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def train_flops_per_token(config: ModelConfig, seq_len: int, num_params: int | None = None) -> float:
  if num_params is None:
    from yijax import models

    num_params = models.param_count(config)["active"]
  attention_width = config.num_heads * config.resolved_head_dim
  return 6.0 * num_params + 12.0 * config.num_layers * attention_width * seq_len


def peak_flops(device=None) -> float | None:
  """Datasheet bf16 peak of a device (per chip), or None when unknown (CPU)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for name in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
    if name.lower() in kind.lower():
      return PEAK_BF16_FLOPS[name]
  return None


def mfu(tokens_per_second: float, flops_per_token: float, num_devices: int | None = None,
        device=None) -> float | None:
  peak = peak_flops(device)
  if peak is None:
    return None
  return tokens_per_second * flops_per_token / (peak * (num_devices or jax.device_count()))
