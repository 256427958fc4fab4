"""Grouped-matmul microbenchmark: TFLOP/s of each implementation on the moe_bench expert problem.

  python benchmarks/grouped_matmul.py                  # GPU: m = 4*4096*6 rows, 64 experts, 1024 <-> 704
  python benchmarks/grouped_matmul.py --small          # CPU smoke check (Pallas in interpret mode)

For the up projection (hidden -> expert FFN) and the down projection (FFN ->
hidden), random routing (every expert equally likely) and skewed routing
(Zipf: expert i chosen with probability ~ 1/(i+1)), bf16 operands: forward and
forward+backward (dx, dw) time, TFLOP/s (2·m·k·n forward, 3x that with the
backward, m = routed rows), XLA's temporary memory, and the relative error of
y / dx / dw against a float32 reference (ragged_dot on upcast inputs,
precision HIGHEST). Timing: compile and warm-up excluded, block_until_ready,
median of --iters. A "dense matmul" row gives the same-FLOP plain GEMM as the
ceiling. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from yijax.models import grouped_matmul as gm  # noqa: E402

# pallas:block_m,block_n,block_k,num_warps,num_stages[,block_dw] (PallasConfig)
GPU_VARIANTS = ("ragged", "tokamax", "tokamax_triton", "tokamax_mosaic", "padded:128", "padded:256",
                "padded:512", "pallas:128,128,64,8,3", "pallas:128,64,64,4,4", "pallas:64,128,64,4,4",
                "pallas:128,128,32,4,4,64")
CPU_VARIANTS = ("ragged", "tokamax", "padded:128", "padded:256", "pallas:128,128,64,8,3")


def group_sizes(m: int, groups: int, routing: str, seed: int = 0) -> np.ndarray:
  p = np.ones(groups) if routing == "random" else 1.0 / np.arange(1, groups + 1)
  return np.random.default_rng(seed).multinomial(m, p / p.sum()).astype(np.int32)


def make_fn(variant: str):
  """(name, fn(x, w, sizes) -> y) for a variant 'impl[:options]'."""
  impl, _, opts = variant.partition(":")
  kwargs = {}
  if impl == "padded" and opts:
    kwargs["block_size"] = int(opts)
  if impl == "pallas" and opts:
    kwargs["pallas_config"] = gm.PallasConfig(*map(int, opts.split(",")))
  if impl == "dense":
    return lambda x, w, sizes: jnp.dot(x, w[0])
  return lambda x, w, sizes: gm.gmm(x, w, sizes, impl, **kwargs)


def median_seconds(fn, args, warmup: int, iters: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def temp_gib(compiled) -> float:
  try:
    return compiled.memory_analysis().temp_size_in_bytes / 2**30
  except Exception:  # not every backend reports it
    return float("nan")


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def measure(variant, x, w, sizes, dy, reference, args) -> list[str]:
  fn = make_fn(variant)

  def forward_backward(x, w, sizes, dy):
    y, vjp = jax.vjp(lambda x, w: fn(x, w, sizes), x, w)
    return (y, *vjp(dy))

  forward = jax.jit(fn).lower(x, w, sizes).compile()
  both = jax.jit(forward_backward).lower(x, w, sizes, dy).compile()
  outs = both(x, w, sizes, dy)
  errors = "-" if variant == "dense" else " / ".join(f"{rel_err(o, r):.1e}" for o, r in zip(outs, reference))
  fwd_s = median_seconds(forward, (x, w, sizes), args.warmup, args.iters)
  both_s = median_seconds(both, (x, w, sizes, dy), args.warmup, args.iters)
  flop = 2.0 * int(np.sum(np.asarray(sizes))) * x.shape[1] * w.shape[2]
  return [variant, f"{fwd_s * 1e3:.3f}", f"{flop / fwd_s / 1e12:.3g}", f"{both_s * 1e3:.3f}",
          f"{3 * flop / both_s / 1e12:.3g}", f"{temp_gib(both):.2f}", errors]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--small", action="store_true", help="a CPU-sized problem (smoke check)")
  parser.add_argument("--tokens", type=int, default=4 * 4096)
  parser.add_argument("--top_k", type=int, default=6)
  parser.add_argument("--experts", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=1024)
  parser.add_argument("--ffn", type=int, default=704)
  parser.add_argument("--variants", default=None,
                      help="variants separated by ';', e.g. 'ragged;padded:512;pallas:128,128,64,8,3'")
  parser.add_argument("--routing", default="random;skewed")
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  args = parser.parse_args(argv)
  if args.small:
    args.tokens, args.experts, args.hidden, args.ffn = 256, 8, 128, 96
    args.iters, args.warmup = min(args.iters, 3), 1
  on_gpu = jax.default_backend() == "gpu"
  variants = args.variants.split(";") if args.variants else list(GPU_VARIANTS if on_gpu else CPU_VARIANTS)
  m = args.tokens * args.top_k
  print(f"device: {jax.devices()[0].device_kind}  jax {jax.__version__}  m = {args.tokens}x{args.top_k} = {m} "
        f"rows  {args.experts} groups  bf16 operands, f32 accumulation"
        + ("" if on_gpu else "  (not a GPU: Pallas runs in interpret mode, timings are a smoke check only)"))
  rng = np.random.default_rng(0)
  rows = []
  for problem, k, n in (("up", args.hidden, args.ffn), ("down", args.ffn, args.hidden)):
    x = jnp.asarray(rng.normal(size=(m, k)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(args.experts, k, n)) / np.sqrt(k), jnp.bfloat16)
    dy = jnp.asarray(rng.normal(size=(m, n)), jnp.bfloat16)
    for routing in args.routing.split(";"):
      sizes = jnp.asarray(group_sizes(m, args.experts, routing))

      @jax.jit
      def reference(x, w, sizes, dy):
        f = lambda x, w: jax.lax.ragged_dot(x, w, sizes, precision=jax.lax.Precision.HIGHEST)
        y, vjp = jax.vjp(f, x.astype(jnp.float32), w.astype(jnp.float32))
        return (y, *vjp(dy.astype(jnp.float32)))

      want = reference(x, w, sizes, dy)
      label = f"{problem} {k}->{n}, {routing} (max group {int(jnp.max(sizes))})"
      for variant in variants + ["dense"]:
        try:
          row = measure(variant, x, w, sizes, dy, want, args)
        except Exception as e:  # a kernel that does not lower here: report it and go on
          row = [variant, f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}",
                 "", "", "", "", ""]
        rows.append([label] + row)
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
  print()
  print(common.table(["problem", "impl", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms", "fwd+bwd TFLOP/s",
                      "XLA temp GiB", "rel err y / dx / dw"], rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
