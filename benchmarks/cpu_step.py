"""Where the time goes in the small-model train step on CPU: one row per variant.

  python benchmarks/cpu_step.py                                  # the quickstart recipes, every variant
  python benchmarks/cpu_step.py --sizes=128x4 --variants=base,bf16 --steps=20

Each row times yijax's real train step (cross entropy with z-loss, global-norm
clipping, AdamW, the NaN guard, donated state) on a one-device CPU mesh, in its
own process (XLA flags are read once per process). Sizes are HIDDENxLAYERS with
the quickstart recipe's shape around them (4 heads, MLP 8/3 x hidden, the given
vocabulary, sequence and batch). Printed: tokens/s, GFLOP/s counted as 6N per
token (N = every parameter, as nanoGPT counts) and as the model's matmul FLOPs
(6N + attention), and the first call's time (trace and compile).

Variants (combine with +, for example unroll+multi4):
  base        float32 compute, layers scanned, XLA's default CPU threading
  bf16        bfloat16 compute over float32 parameters
  unroll      the layer scan unrolled (scan_unroll = num_layers)
  no_zloss    z-loss coefficient 0 (one reduction less)
  chunk       cross entropy in vocabulary chunks of 256 (the chunked path)
  multi4      4 optimizer steps per compiled call (lax.scan over 4 batches)
  no_eigen_mt --xla_cpu_multi_thread_eigen=false
  fast_math   --xla_cpu_enable_fast_math=true
  no_xnn      --xla_cpu_use_xnnpack=false
  xnn_fusion  --xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce (XNNPACK fusions)
  ynn_fusion  --xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce (YNNPACK fusions)
  onednn      --xla_cpu_use_onednn=true
  vec512      --xla_cpu_prefer_vector_width=512
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

VARIANTS = {
    "base": ({}, ""),
    "bf16": ({"dtype": "bfloat16"}, ""),
    "unroll": ({"scan_unroll": -1}, ""),
    "no_zloss": ({"z_loss": 0.0}, ""),
    "chunk": ({"vocab_chunk": 256}, ""),
    "multi4": ({"steps_per_call": 4}, ""),
    "no_eigen_mt": ({}, "--xla_cpu_multi_thread_eigen=false"),
    "fast_math": ({}, "--xla_cpu_enable_fast_math=true"),
    "no_xnn": ({}, "--xla_cpu_use_xnnpack=false"),
    "xnn_fusion": ({}, "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce"),
    "ynn_fusion": ({}, "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"),
    "onednn": ({}, "--xla_cpu_use_onednn=true"),
    "vec512": ({}, "--xla_cpu_prefer_vector_width=512"),
}


def model_config(size: str, vocab: int, seq_len: int, dtype: str = "float32", scan_unroll: int = 1):
  from yijax.models import presets

  hidden, layers = (int(v) for v in size.split("x"))
  heads = max(1, hidden // 64) if hidden >= 256 else 4
  mlp = int(round(hidden * 8 / 3 / 32)) * 32
  return presets.get("tiny").replace(
      vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=heads,
      head_dim=hidden // heads, mlp_dim=mlp, max_seq_len=max(seq_len, 128), dtype=dtype,
      scan_unroll=layers if scan_unroll == -1 else scan_unroll)


def measure(args, variant: str) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from yijax import sharding
  from yijax.train import flops, optimizer as opt_lib, step as step_lib
  from yijax.train.config import base_config

  changes = {}
  for part in variant.split("+"):
    changes.update(VARIANTS[part][0])
  k = changes.pop("steps_per_call", 1)
  z_loss = changes.pop("z_loss", 1e-4)
  vocab_chunk = changes.pop("vocab_chunk", 0)
  config = model_config(args.size, args.vocab, args.seq_len, **changes)
  tx, schedule = opt_lib.make_optimizer(base_config().optimizer, 1000)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  state = step_lib.init_state(config, tx, mesh, sharding.DEFAULT_RULES, seed=0)
  train_step = step_lib.make_train_step(config, tx, schedule, z_loss, vocab_chunk, 1)

  def several(state, batches):
    return jax.lax.scan(train_step, state, batches)

  rng = np.random.default_rng(0)
  shape = (k, args.batch, args.seq_len)
  batches = {"tokens": rng.integers(0, args.vocab, shape).astype(np.int32),
             "segment_ids": np.ones(shape, np.int32),
             "positions": np.broadcast_to(np.arange(args.seq_len, dtype=np.int32), shape).copy()}
  if k == 1:
    batches = {n: b[0] for n, b in batches.items()}
  fn = jax.jit(train_step if k == 1 else several, donate_argnums=(0,))
  batches = jax.device_put(batches)
  with sharding.use_mesh(mesh):
    start = time.perf_counter()
    state, metrics = fn(state, batches)
    jax.block_until_ready(metrics)
    first_s = time.perf_counter() - start
    for _ in range(2):
      state, metrics = fn(state, batches)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(max(1, args.steps // k)):
      start = time.perf_counter()
      state, metrics = fn(state, batches)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  tokens_per_s = k * args.batch * args.seq_len / float(np.median(times))
  return {"tokens_per_s": tokens_per_s, "params": n, "gflops_6n": tokens_per_s * 6 * n / 1e9,
          "gflops_model": tokens_per_s * flops.train_flops_per_token(config, args.seq_len, n) / 1e9,
          "first_s": first_s, "loss": float(jnp.mean(metrics["loss"]))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="128x4,192x4,256x6", help="HIDDENxLAYERS, comma-separated")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--vocab", type=int, default=512)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--size", help=argparse.SUPPRESS)
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    common.emit(measure(args, args.worker))
    return 0
  unknown = {p for v in args.variants.split(",") for p in v.split("+")} - set(VARIANTS)
  if unknown:
    parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
  import platform
  print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; vocab {args.vocab}, "
        f"seq {args.seq_len}, batch {args.batch}\n")
  rows = []
  for size in args.sizes.split(","):
    for variant in args.variants.split(","):
      flags = " ".join(VARIANTS[p][1] for p in variant.split("+") if VARIANTS[p][1])
      env_flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f)
      os.environ["XLA_FLAGS"] = env_flags
      try:
        r = common.run_worker(__file__, [f"--size={size}", f"--worker={variant}", f"--vocab={args.vocab}",
                                         f"--seq_len={args.seq_len}", f"--batch={args.batch}",
                                         f"--steps={args.steps}"])
      finally:
        os.environ["XLA_FLAGS"] = env_flags[: len(env_flags) - len(flags)].strip()
      if "error" in r:
        rows.append([size, variant, "-", "-", "-", "-", "-", r["error"][:80]])
        continue
      rows.append([size, variant, f"{r['params'] / 1e6:.2f}M", f"{r['tokens_per_s']:,.0f}",
                   f"{r['gflops_6n']:.1f}", f"{r['gflops_model']:.1f}", f"{r['first_s']:.1f}", f"{r['loss']:.3f}"])
      print(" | ".join(rows[-1]), flush=True)
  print()
  print(common.table(["size", "variant", "params", "tokens/s", "GFLOP/s (6N)", "GFLOP/s (model)", "first call s",
                      "loss"], rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
