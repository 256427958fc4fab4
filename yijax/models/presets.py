"""Named model sizes. `configs/models/<name>.py` return these as ConfigDicts."""

from __future__ import annotations

import dataclasses

import ml_collections

from yijax.models.config import ConfigError, ModelConfig

YI_6B = ModelConfig(
    vocab_size=64000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=4, head_dim=128,
    mlp_dim=11008, rope_theta=5_000_000.0, max_seq_len=4096, norm_eps=1e-5, tie_embeddings=False,
)

PRESETS: dict[str, ModelConfig] = {
    # a few million parameters: tests, the quickstart, the smoke studies
    "tiny": ModelConfig(
        vocab_size=4096, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32,
        mlp_dim=704, rope_theta=10_000.0, max_seq_len=1024,
    ),
    "yi_6b": YI_6B,
    # Yi-9B: Yi-6B depth up-scaled to 48 layers
    "yi_9b": dataclasses.replace(YI_6B, num_layers=48),
    "yi_34b": dataclasses.replace(
        YI_6B, hidden_size=7168, num_layers=60, num_heads=56, num_kv_heads=8, mlp_dim=20480
    ),
    # the benchmark model (the size of the HF reference measurements)
    "yi_1p25b": dataclasses.replace(
        YI_6B, hidden_size=2048, num_layers=22, num_heads=16, num_kv_heads=4, mlp_dim=5632
    ),
    # MoE for tests and the small experiments: 1 dense layer, then 16 experts top-2 + 1 shared
    "moe_tiny": ModelConfig(
        vocab_size=4096, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32,
        mlp_dim=704, rope_theta=10_000.0, max_seq_len=1024, num_experts=16, num_experts_per_token=2,
        num_shared_experts=1, expert_mlp_dim=128, shared_expert_mlp_dim=128, first_dense_layers=1,
        router_type="softmax_topk", norm_topk_prob=True, aux_loss_coef=0.01,
    ),
    # the MoE benchmark model: ~2.3B total, ~0.4B active parameters
    "moe_bench": dataclasses.replace(
        YI_6B, hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=4, head_dim=64, mlp_dim=5632,
        num_experts=64, num_experts_per_token=6, num_shared_experts=2, expert_mlp_dim=704,
        shared_expert_mlp_dim=704, first_dense_layers=1, router_type="softmax_topk", norm_topk_prob=True,
        aux_loss_coef=0.001,
    ),
}
# Yi-Lightning in miniature: the tiny MoE with hybrid attention. Pairs of layers share one K/V
# (kv_share_group=2); the first pair (dense FFN) attends in a 128-token sliding window, the second
# (MoE: 16 experts top-2 + 1 shared) to everything.
PRESETS["yi_lightning_tiny"] = dataclasses.replace(
    PRESETS["moe_tiny"], attention_pattern="SSFF", sliding_window=128, kv_share_group=2, first_dense_layers=2)


def get(name: str) -> ModelConfig:
  if name not in PRESETS:
    raise ConfigError(f"no model preset {name!r}; presets: {sorted(PRESETS)}")
  return PRESETS[name]


def config_dict(name: str, **changes) -> ml_collections.ConfigDict:
  """The preset as a ConfigDict (the `model` section of a run config)."""
  values = get(name).replace(**changes).to_dict()
  return ml_collections.ConfigDict(values)
