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
import json
import os
import subprocess
import sys
import time

import numpy as np


def run_hf(args, mode: str) -> dict:
  """One HF measurement (called in a subprocess): {"tokens_per_s", "peak_gb"}."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from yijax.models import presets

  c = presets.get(args.config)
  config = LlamaConfig(
      vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.mlp_dim,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
      head_dim=c.resolved_head_dim, max_position_embeddings=max(c.max_seq_len, args.seq_len),
      rope_theta=c.rope_theta, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
      attn_implementation="sdpa")
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = LlamaForCausalLM(config).to(device)
  if args.remat != "none":
    model.gradient_checkpointing_enable()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                fused=device == "cuda")
  forward = torch.compile(model) if mode == "compile" else model
  tokens = torch.randint(0, c.vocab_size, (args.batch, args.seq_len), device=device)

  def step():
    with torch.autocast(device, dtype=torch.bfloat16):
      loss = forward(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  for _ in range(args.warmup):
    step()
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  sync()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - start)
  peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
  return {"tokens_per_s": args.batch * args.seq_len / float(np.median(times)), "peak_gb": peak}


def run_yijax(args) -> dict:
  import jax
  import jax.numpy as jnp

  from yijax import sharding
  from yijax.models import presets
  from yijax.train import optimizer as opt_lib, step as step_lib
  from yijax.train.config import base_config

  config = presets.get(args.config).replace(
      dtype=args.dtype, remat_policy=args.remat, attention_impl=args.attention,
      max_seq_len=max(presets.get(args.config).max_seq_len, args.seq_len))
  opt_cfg = base_config().optimizer
  tx, schedule = opt_lib.make_optimizer(opt_cfg, 1000)
  mesh = sharding.make_mesh({"data": -1})
  state = step_lib.init_state(config, tx, mesh, sharding.DEFAULT_RULES, seed=0)
  _, shardings, _ = step_lib.state_shardings(config, tx, mesh, sharding.DEFAULT_RULES)
  data = sharding.data_sharding(mesh)
  train_step = step_lib.make_train_step(config, tx, schedule, 1e-4, args.vocab_chunk, 1)
  with sharding.use_mesh(mesh):
    fn = jax.jit(train_step, in_shardings=(shardings, data), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, config.vocab_size, (args.batch, args.seq_len)).astype(np.int32),
           "segment_ids": np.ones((args.batch, args.seq_len), np.int32),
           "positions": np.broadcast_to(np.arange(args.seq_len, dtype=np.int32), (args.batch, args.seq_len)).copy()}
  batch = jax.device_put(batch, data)
  start = time.perf_counter()
  with sharding.use_mesh(mesh):
    state, metrics = fn(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
      state, metrics = fn(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
      start = time.perf_counter()
      state, metrics = fn(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  stats = jax.devices()[0].memory_stats() or {}
  return {"tokens_per_s": args.batch * args.seq_len / float(np.median(times)),
          "peak_gb": stats.get("peak_bytes_in_use", float("nan")) / 2**30, "compile_s": compile_s,
          "loss": float(metrics["loss"]), "config": config}


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
  if args.hf_worker:
    print("HF_RESULT " + json.dumps(run_hf(args, args.hf_worker)), flush=True)
    return 0

  hf = {}
  if args.hf:  # before JAX touches the GPU, each in its own process
    for mode in ("eager", "compile"):
      cmd = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
             f"--hf_worker={mode}"]
      out = subprocess.run([c for c in cmd if c != "--hf"], capture_output=True, text=True)
      line = next((l for l in out.stdout.splitlines() if l.startswith("HF_RESULT ")), None)
      hf[mode] = json.loads(line[len("HF_RESULT "):]) if line else {"error": (out.stderr or out.stdout)[-300:]}
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax

  from yijax.train import flops

  result = run_yijax(args)
  config = result.pop("config")
  per_token = flops.train_flops_per_token(config, args.seq_len)
  device = jax.devices()[0]
  print(f"device: {device.device_kind}  jax {jax.__version__}  model {args.config}  seq {args.seq_len}  "
        f"batch {args.batch}  {args.dtype}  remat {args.remat}  attention {args.attention}  "
        f"({per_token / 1e9:.2f} GFLOP/token)  yijax compile {result['compile_s']:.1f} s")
  rows = [("yijax (jax.jit)", result)] + [(f"HF transformers {m}", r) for m, r in hf.items()]
  print("\n| implementation | tokens/s | MFU | peak GiB | vs HF compile |\n|---|---|---|---|---|")
  reference = hf.get("compile", {}).get("tokens_per_s")
  for name, r in rows:
    if "error" in r:
      print(f"| {name} | error: {r['error'].splitlines()[-1] if r['error'] else '?'} | | | |")
      continue
    util = flops.mfu(r["tokens_per_s"], per_token, num_devices=1)
    ratio = f"{r['tokens_per_s'] / reference:.2f}x" if reference else "-"
    print(f"| {name} | {r['tokens_per_s']:,.0f} | {'n/a' if util is None else f'{util:.1%}'} | "
          f"{r['peak_gb']:.1f} | {ratio} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
