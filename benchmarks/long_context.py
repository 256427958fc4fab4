"""Long-context training on one accelerator: the longest sequence that fits, and speed at length.

  python benchmarks/long_context.py --config=yi_1p25b
  python benchmarks/long_context.py --config=yi_1p25b --remat=full --lengths=8192,32768,131072

1. Fit: for each candidate length (batch 1) the full train step (AdamW,
   chunked cross entropy) is compiled from abstract shapes and its memory
   analysis (arguments + outputs + temporaries - donated aliases) compared
   with the device's memory; nothing is allocated. The longest that fits is
   then run for real to confirm.
2. Speed: tokens/s and MFU (6N + 12·L·d·S FLOPs per token over the bf16 peak)
   at each --lengths value that fits.
Prints one table with the attention implementation and remat policy used.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def build(config_name, seq_len, args):
  import jax

  from yijax import sharding
  from yijax.models import presets
  from yijax.train import optimizer as opt_lib, step as step_lib
  from yijax.train.config import base_config

  base = presets.get(config_name)
  config = base.replace(dtype=args.dtype, remat_policy=args.remat, attention_impl=args.attention,
                        max_seq_len=max(base.max_seq_len, seq_len))
  tx, schedule = opt_lib.make_optimizer(base_config().optimizer, 1000)
  mesh = sharding.make_mesh({"data": -1})
  abstract, shardings, _ = step_lib.state_shardings(config, tx, mesh, sharding.DEFAULT_RULES)
  data = sharding.data_sharding(mesh)
  train_step = step_lib.make_train_step(config, tx, schedule, 1e-4, args.vocab_chunk, 1)
  with sharding.use_mesh(mesh):
    fn = jax.jit(train_step, in_shardings=(shardings, data), out_shardings=(shardings, sharding.replicated(mesh)),
                 donate_argnums=(0,))
  batch = {k: jax.ShapeDtypeStruct((1, seq_len), np.int32) for k in ("tokens", "segment_ids", "positions")}
  return config, tx, mesh, shardings, data, fn, abstract, batch


def compiled_bytes(fn, abstract, batch, mesh):
  from yijax import sharding

  with sharding.use_mesh(mesh):
    memory = fn.lower(abstract, batch).compile().memory_analysis()
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
          - memory.alias_size_in_bytes)


def run_steps(config, tx, mesh, fn, batch_shapes, steps: int):
  import jax

  from yijax import sharding
  from yijax.train import step as step_lib

  seq_len = batch_shapes["tokens"].shape[1]
  state = step_lib.init_state(config, tx, mesh, sharding.DEFAULT_RULES, seed=0)
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, config.vocab_size, (1, seq_len)).astype(np.int32),
           "segment_ids": np.ones((1, seq_len), np.int32),
           "positions": np.arange(seq_len, dtype=np.int32)[None]}
  times = []
  with sharding.use_mesh(mesh):
    for i in range(steps + 2):
      start = time.perf_counter()
      state, metrics = fn(state, batch)
      jax.block_until_ready(metrics)
      if i >= 2:
        times.append(time.perf_counter() - start)
  return seq_len / float(np.median(times)), float(metrics["loss"])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="yi_1p25b")
  parser.add_argument("--candidates", default="8192,16384,32768,65536,98304,131072,163840,196608,262144")
  parser.add_argument("--lengths", default="8192,32768,131072")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--remat", default="full")
  parser.add_argument("--attention", default="auto")
  parser.add_argument("--vocab_chunk", type=int, default=8192)
  parser.add_argument("--memory_fraction", type=float, default=0.92, help="of the device's memory to allow")
  args = parser.parse_args(argv)

  import jax

  from yijax.models import attention
  from yijax.train import flops

  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  capacity = stats.get("bytes_limit")
  print(f"device: {device.device_kind}  jax {jax.__version__}  model {args.config}  remat {args.remat}  "
        f"attention {args.attention} -> {attention.resolve_impl(args.attention, 8192)}  "
        f"memory {'unknown' if capacity is None else f'{capacity / 2**30:.1f} GiB'}", flush=True)
  rows, longest = [], None
  for seq_len in [int(s) for s in args.candidates.split(",")]:
    config, tx, mesh, shardings, data, fn, abstract, batch = build(args.config, seq_len, args)
    try:
      need = compiled_bytes(fn, abstract, batch, mesh)
    except Exception as e:  # a length the kernels cannot compile: report and stop growing
      rows.append((seq_len, "compile error", f"{type(e).__name__}: {str(e).splitlines()[0][:60]}", "", ""))
      break
    fits = capacity is None or need <= args.memory_fraction * capacity
    rows.append((seq_len, f"{need / 2**30:.1f} GiB", "fits" if fits else "too big", "", ""))
    if not fits:
      break
    longest = seq_len
  speeds = {}
  for seq_len in sorted({int(s) for s in args.lengths.split(",")} | ({longest} if longest else set())):
    if longest is None or seq_len > longest:
      continue
    config, tx, mesh, shardings, data, fn, abstract, batch = build(args.config, seq_len, args)
    tokens_per_s, loss = run_steps(config, tx, mesh, fn, batch, args.steps)
    util = flops.mfu(tokens_per_s, flops.train_flops_per_token(config, seq_len), num_devices=1)
    speeds[seq_len] = (tokens_per_s, util, loss)
  print("\n| seq len | compiled memory | fits | tokens/s | MFU |\n|---|---|---|---|---|")
  for seq_len, memory, fits, _, _ in rows:
    speed = speeds.get(seq_len)
    tps = f"{speed[0]:,.0f}" if speed else ""
    mfu = ("n/a" if speed[1] is None else f"{speed[1]:.1%}") if speed else ""
    print(f"| {seq_len:,} | {memory} | {fits} | {tps} | {mfu} |")
  print(f"\nlongest full train step that fits (batch 1): {longest:,} tokens" if longest else "\nnothing fits")
  return 0


if __name__ == "__main__":
  sys.exit(main())
