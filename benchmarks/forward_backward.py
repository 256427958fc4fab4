"""Forward+backward throughput and MFU of a model for each attention kernel.

  python benchmarks/forward_backward.py --config=yi_1p25b --seq_len=4096 --batch=4

Prints one table: implementation, step time, tokens/s, MFU (6N + 12·L·d·S
FLOPs per token over the device's bf16 peak). Kernels that cannot run on the
backend are listed with the reason.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from yijax import models
from yijax.models import presets
from yijax.train import flops


def _loss(config, params, tokens):
  logits = models.apply(config, params, tokens[:, :-1])
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))


def measure(config, seq_len, batch, steps, warmup=2):
  params = models.init_params(config, jax.random.key(0))
  params = jax.tree.map(lambda p: p.astype(jnp.dtype(config.param_dtype)), params)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq_len + 1)), jnp.int32)
  step = jax.jit(jax.value_and_grad(lambda p, t: _loss(config, p, t)))
  for _ in range(warmup):
    jax.block_until_ready(step(params, tokens))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(step(params, tokens))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="yi_1p25b", help=f"model preset: {sorted(presets.PRESETS)}")
  parser.add_argument("--seq_len", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--impls", default="xla,cudnn,splash")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--remat", default="none")
  parser.add_argument("--num_layers", type=int, default=0, help="override the preset's depth")
  args = parser.parse_args(argv)

  base = presets.get(args.config).replace(dtype=args.dtype, remat_policy=args.remat)
  if args.num_layers:
    base = base.replace(num_layers=args.num_layers)
  per_token = flops.train_flops_per_token(base, args.seq_len)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} x{jax.device_count()}  jax {jax.__version__}  model {args.config} "
        f"({models.param_count(base)['total'] / 1e9:.3f}B)  seq {args.seq_len}  batch {args.batch}  "
        f"{args.dtype}  remat {args.remat}", flush=True)
  rows = []
  for impl in args.impls.split(","):
    try:
      seconds = measure(base.replace(attention_impl=impl), args.seq_len, args.batch, args.steps)
    except Exception as e:  # a kernel the backend lacks: report, go on
      rows.append((impl, "-", "-", "-", f"{type(e).__name__}: {str(e).splitlines()[0][:70]}"))
      continue
    tokens_per_s = args.batch * args.seq_len / seconds
    util = flops.mfu(tokens_per_s, per_token, num_devices=1)
    rows.append((impl, f"{seconds * 1e3:.1f}", f"{tokens_per_s:,.0f}", "n/a" if util is None else f"{util:.1%}", ""))
  print("\n| attention | step ms | tokens/s | MFU | note |\n|---|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(row) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
