"""Full train-step throughput (forward, backward, AdamW) of yijax, optionally vs Hugging Face.

  python benchmarks/train_throughput.py --config=yi_1p25b --seq_len=4096 --batch=4 --hf

yijax: the real train step (chunked cross entropy, z-loss, global-norm
clipping, AdamW, NaN guard, donated state) in bf16 compute over float32
parameters. --hf also runs transformers' LlamaForCausalLM with the same shape
(bf16 autocast, fused AdamW; eager and torch.compile), each in its own
process before JAX touches the GPU, and prints the ratio. Prints one table:
tokens/s, MFU (6N + 12·L·d·S FLOPs per token over the device's bf16 peak)
and peak device memory.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def run_hf(args, mode: str) -> dict:
  """One HF measurement (called in a subprocess): {"tokens_per_s", "peak_gb"}."""
  from transformers import LlamaConfig, LlamaForCausalLM

  from yijax.models import presets

  c = presets.get(args.config)
  config = LlamaConfig(
      vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.mlp_dim,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
      head_dim=c.resolved_head_dim, max_position_embeddings=max(c.max_seq_len, args.seq_len),
      rope_theta=c.rope_theta, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
      attn_implementation="sdpa")
  return common.time_torch_train(LlamaForCausalLM(config), c.vocab_size, args.batch, args.seq_len, args.steps,
                                 args.warmup, mode == "compile", args.remat != "none")


def run_yijax(args) -> dict:
  from yijax.models import presets

  base = presets.get(args.config)
  config = base.replace(dtype=args.dtype, remat_policy=args.remat, attention_impl=args.attention,
                        max_seq_len=max(base.max_seq_len, args.seq_len))
  return common.time_yijax_train(config, args.batch, args.seq_len, args.steps, args.warmup, args.vocab_chunk)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="yi_1p25b")
  parser.add_argument("--seq_len", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--remat", default="none", help="none | full | dots | minimal | ... (HF: checkpointing on/off)")
  parser.add_argument("--attention", default="auto")
  parser.add_argument("--vocab_chunk", type=int, default=8192)
  parser.add_argument("--hf", action="store_true", help="also measure transformers eager and torch.compile")
  parser.add_argument("--hf_worker", choices=("eager", "compile"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  argv = list(argv if argv is not None else sys.argv[1:])
  if args.hf_worker:
    common.emit(run_hf(args, args.hf_worker))
    return 0

  hf = {}
  if args.hf:  # before JAX touches the GPU, each in its own process
    for mode in ("eager", "compile"):
      hf[mode] = common.run_worker(__file__, argv + [f"--hf_worker={mode}"], drop=("--hf",))
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  result = run_yijax(args)
  print(f"device: {result['device']}  jax {result['jax']}  model {args.config}  seq {args.seq_len}  "
        f"batch {args.batch}  {args.dtype}  remat {args.remat}  attention {args.attention}  "
        f"({result['gflop_per_token']:.2f} GFLOP/token)  yijax compile {result['compile_s']:.1f} s\n")
  reference = hf.get("compile", {}).get("tokens_per_s")
  rows = []
  for name, r in [("yijax (jax.jit)", result)] + [(f"HF transformers {m}", r) for m, r in hf.items()]:
    if "error" in r:
      rows.append([name, f"error: {r['error']}", "", "", ""])
      continue
    util = None if result["mfu"] is None else result["mfu"] * r["tokens_per_s"] / result["tokens_per_s"]
    ratio = f"{r['tokens_per_s'] / reference:.2f}x" if reference else "-"
    rows.append([name, f"{r['tokens_per_s']:,.0f}", common.fmt_mfu(util), f"{r['peak_gb']:.1f}", ratio])
  print(common.table(["implementation", "tokens/s", "MFU", "peak GiB", "vs HF compile"], rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
