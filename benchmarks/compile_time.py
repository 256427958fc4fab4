"""Compile time of the scanned decoder at two depths (goal: 60 layers <= 1.5x 6 layers).

  python benchmarks/compile_time.py --config=yi_1p25b --seq_len=4096 --batch=4

Lowers and compiles forward+backward from abstract shapes (nothing is
allocated), so it runs on any backend; prints one table.
"""

from __future__ import annotations

import argparse
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from yijax import models
from yijax.models import presets


def compile_seconds(config, seq_len, batch):
  params = nn.unbox(models.abstract_params(config))
  tokens = jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32)

  def loss(p, t):
    logits = models.apply(config, p, t[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, 1:, None], -1))

  start = time.perf_counter()
  lowered = jax.jit(jax.value_and_grad(loss)).lower(params, tokens)
  lower_s = time.perf_counter() - start
  lowered.compile()
  return lower_s, time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="yi_1p25b")
  parser.add_argument("--depths", default="6,60")
  parser.add_argument("--seq_len", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--attention", default="auto")
  args = parser.parse_args(argv)
  base = presets.get(args.config).replace(dtype=args.dtype, attention_impl=args.attention)
  print(f"device: {jax.devices()[0].device_kind}  jax {jax.__version__}  model {args.config}  "
        f"seq {args.seq_len}  batch {args.batch}", flush=True)
  rows = []
  for depth in [int(d) for d in args.depths.split(",")]:
    compile_seconds(base.replace(num_layers=depth), 16, 1)  # warm tracing caches once per depth
    lower_s, total_s = compile_seconds(base.replace(num_layers=depth), args.seq_len, args.batch)
    rows.append((depth, lower_s, total_s))
  first = rows[0][2]
  print("\n| layers | trace+lower s | lower+compile s | vs first |\n|---|---|---|---|")
  for depth, lower_s, total_s in rows:
    print(f"| {depth} | {lower_s:.2f} | {total_s:.2f} | {total_s / first:.2f}x |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
