"""Full MoE train-step throughput per dispatch path, optionally vs Hugging Face Qwen2-MoE.

  python benchmarks/moe_throughput.py --config=moe_bench --seq_len=4096 --batch=4 --hf
  python benchmarks/moe_throughput.py --config=moe_tiny --seq_len=128 --batch=2 --steps=2 --hf   # CPU smoke

yijax: the real train step (chunked cross entropy, z-loss, MoE balance loss,
clipping, AdamW, NaN guard, donated state; bf16 compute over float32
parameters) once per `moe_impl` in --impls (default: the dropless paths
ragged, tokamax, padded, pallas; add capacity with --capacity_factor, or
tokamax_triton / tokamax_mosaic), each in its own process so that peak memory
is its own and a path that fails to compile is reported, not fatal.
--hf first runs transformers' Qwen2MoeForCausalLM with the same shape (same
experts, top-k, shared-expert width, first dense layers, aux loss; its
shared-expert sigmoid gate is the one difference; bf16 autocast, fused AdamW,
eager and torch.compile, the experts implementation transformers picks,
grouped_mm where torch supports it), each in its own process before any JAX
process takes the GPU. Prints one table: tokens/s, MFU on active parameters
(6·N_active + 12·L·d·S FLOPs per token over the device's bf16 peak), peak
device memory, compile time and the ratio to HF.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

DROPLESS = ("ragged", "tokamax", "padded", "pallas")


def run_hf(args, mode: str) -> dict:
  """One HF measurement (in a subprocess)."""
  from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

  from yijax.models import presets

  c = presets.get(args.config)
  kwargs = {} if args.hf_experts is None else {"experts_implementation": args.hf_experts}
  config = Qwen2MoeConfig(
      vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.mlp_dim,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
      max_position_embeddings=max(c.max_seq_len, args.seq_len), rms_norm_eps=c.norm_eps,
      tie_word_embeddings=c.tie_embeddings, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
      num_experts=c.num_experts, num_experts_per_tok=c.num_experts_per_token, norm_topk_prob=c.norm_topk_prob,
      moe_intermediate_size=c.expert_mlp_dim,
      shared_expert_intermediate_size=c.num_shared_experts * c.shared_expert_mlp_dim,
      decoder_sparse_step=c.moe_layer_interval, mlp_only_layers=list(range(c.first_dense_layers)),
      output_router_logits=c.aux_loss_coef > 0, router_aux_loss_coef=c.aux_loss_coef, qkv_bias=False,
      attn_implementation="sdpa", **kwargs)
  if c.resolved_head_dim * c.num_heads != c.hidden_size:
    raise ValueError(f"Qwen2-MoE has head_dim = hidden/heads; preset {args.config} has {c.resolved_head_dim}")
  model = Qwen2MoeForCausalLM(config)
  result = common.time_torch_train(model, c.vocab_size, args.batch, args.seq_len, args.steps, args.warmup,
                                   mode == "compile", args.remat != "none")
  result["experts_impl"] = str(model.config._experts_implementation)
  return result


def run_yijax(args, impl: str) -> dict:
  """One yijax measurement (in a subprocess) with model.moe_impl = impl."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  from yijax.models import presets

  base = presets.get(args.config)
  config = base.replace(dtype=args.dtype, remat_policy=args.remat, attention_impl=args.attention,
                        max_seq_len=max(base.max_seq_len, args.seq_len), moe_impl=impl,
                        capacity_factor=args.capacity_factor if impl == "capacity" else 0.0).validate()
  return common.time_yijax_train(config, args.batch, args.seq_len, args.steps, args.warmup, args.vocab_chunk)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="moe_bench")
  parser.add_argument("--seq_len", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--remat", default="none", help="none | full | dots | minimal | ... (HF: checkpointing on/off)")
  parser.add_argument("--attention", default="auto")
  parser.add_argument("--vocab_chunk", type=int, default=8192)
  parser.add_argument("--impls", default=",".join(DROPLESS), help="moe_impl values, comma separated ('' = none)")
  parser.add_argument("--capacity_factor", type=float, default=1.25, help="for --impls=...,capacity")
  parser.add_argument("--hf", action="store_true", help="also measure transformers Qwen2-MoE eager and compiled")
  parser.add_argument("--hf_experts", default=None, help="transformers experts_implementation (default: its own)")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per measured process")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  argv = list(argv if argv is not None else sys.argv[1:])
  if args.worker:
    kind, _, impl = args.worker.partition(":")
    common.emit(run_hf(args, impl) if kind == "hf" else run_yijax(args, impl))
    return 0

  results = []
  if args.hf:  # before any JAX process takes the GPU
    for mode in ("eager", "compile"):
      results.append((f"HF Qwen2-MoE {mode}", common.run_worker(
          __file__, argv + [f"--worker=hf:{mode}"], drop=("--hf",), timeout=args.timeout)))
  for impl in filter(None, args.impls.split(",")):
    results.append((f"yijax moe_impl={impl}", common.run_worker(
        __file__, argv + [f"--worker=yijax:{impl}"], drop=("--hf",), timeout=args.timeout)))

  ok = [r for _, r in results if "error" not in r]
  jax_run = next((r for r in ok if "mfu" in r), None)
  if jax_run:
    print(f"device: {jax_run['device']}  jax {jax_run['jax']}  model {args.config}  seq {args.seq_len}  "
          f"batch {args.batch}  {args.dtype}  remat {args.remat}  attention {args.attention}  "
          f"({jax_run['gflop_per_token']:.3f} GFLOP/token on active parameters)\n")
  hf_compile = next((r["tokens_per_s"] for n, r in results if n.endswith("compile") and "error" not in r), None)
  hf_best = max((r["tokens_per_s"] for n, r in results if n.startswith("HF") and "error" not in r), default=None)
  rows = []
  for name, r in results:
    if "error" in r:
      rows.append([name, f"error: {r['error']}"] + [""] * 5)
      continue
    util = r.get("mfu")
    if util is None and jax_run and jax_run["mfu"] is not None:  # HF: same FLOPs per token
      util = jax_run["mfu"] * r["tokens_per_s"] / jax_run["tokens_per_s"]
    if "experts_impl" in r:
      name += f" (experts: {r['experts_impl']})"
    ratio = lambda ref: f"{r['tokens_per_s'] / ref:.2f}x" if ref else "-"
    rows.append([name, f"{r['tokens_per_s']:,.0f}", common.fmt_mfu(util), f"{r['peak_gb']:.1f}",
                 f"{r['compile_s']:.1f}", ratio(hf_compile), ratio(hf_best)])
  print(common.table(["implementation", "tokens/s", "MFU (active)", "peak GiB", "compile+warm-up s",
                      "vs HF compile", "vs best HF"], rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
