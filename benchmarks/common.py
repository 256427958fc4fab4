"""Pieces shared by the throughput benchmarks: workers in their own processes, the
timed yijax train step, the timed Hugging Face train step, and the table.

Each measurement that owns the GPU runs in a child process (HF before JAX takes
the device, and one process per yijax variant so that peak memory is that
variant's own and a variant that fails to compile leaves the others standing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = "RESULT "


def emit(result: dict) -> None:
  """Prints a worker's result on the one line `run_worker` reads back."""
  print(RESULT + json.dumps(result), flush=True)


def run_worker(script: str, argv: list[str], drop: tuple[str, ...] = (), timeout: float | None = None) -> dict:
  """Runs `script argv` in a fresh Python process; its RESULT line as a dict, or {"error": tail of output}."""
  cmd = [sys.executable, os.path.abspath(script), *(a for a in argv if a not in drop)]
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout} s"}
  line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith(RESULT)), None)
  if line is None:
    tail = [l for l in (out.stderr or out.stdout).strip().splitlines() if l.strip()]
    return {"error": tail[-1][-300:] if tail else f"exit {out.returncode}, no output"}
  return json.loads(line[len(RESULT):])


def time_torch_train(model, vocab_size: int, batch: int, seq_len: int, steps: int, warmup: int,
                     compile_model: bool, remat: bool) -> dict:
  """The HF train step (bf16 autocast, AdamW fused on CUDA, clipping): tokens/s and peak GiB."""
  import torch

  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = model.to(device)
  if remat:
    model.gradient_checkpointing_enable()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                fused=device == "cuda")
  forward = torch.compile(model) if compile_model else model
  tokens = torch.randint(0, vocab_size, (batch, seq_len), device=device)

  def step():
    with torch.autocast(device, dtype=torch.bfloat16):
      loss = forward(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  start = time.perf_counter()
  for _ in range(warmup):
    loss = step()
  sync()
  warmup_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = step()
    sync()
    times.append(time.perf_counter() - start)
  peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
  return {"tokens_per_s": batch * seq_len / float(np.median(times)), "peak_gb": peak,
          "compile_s": warmup_s, "loss": float(loss)}


def time_yijax_train(config, batch: int, seq_len: int, steps: int, warmup: int, vocab_chunk: int) -> dict:
  """yijax's real train step (chunked CE, z-loss, clipping, AdamW, NaN guard, donated
  state) on a data-parallel mesh of all devices: tokens/s, peak GiB, compile s, MFU."""
  import jax

  from yijax import sharding
  from yijax.train import flops, optimizer as opt_lib, step as step_lib
  from yijax.train.config import base_config

  tx, schedule = opt_lib.make_optimizer(base_config().optimizer, 1000)
  mesh = sharding.make_mesh({"data": -1})
  state = step_lib.init_state(config, tx, mesh, sharding.DEFAULT_RULES, seed=0)
  _, shardings, _ = step_lib.state_shardings(config, tx, mesh, sharding.DEFAULT_RULES)
  data = sharding.data_sharding(mesh)
  train_step = step_lib.make_train_step(config, tx, schedule, 1e-4, vocab_chunk, 1)
  with sharding.use_mesh(mesh):
    fn = jax.jit(train_step, in_shardings=(shardings, data), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  batch_arrays = {
      "tokens": rng.integers(0, config.vocab_size, (batch, seq_len)).astype(np.int32),
      "segment_ids": np.ones((batch, seq_len), np.int32),
      "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy()}
  batch_arrays = jax.device_put(batch_arrays, data)
  with sharding.use_mesh(mesh):
    start = time.perf_counter()
    state, metrics = fn(state, batch_arrays)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(warmup - 1):
      state, metrics = fn(state, batch_arrays)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      state, metrics = fn(state, batch_arrays)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  tokens_per_s = batch * seq_len / float(np.median(times))
  per_token = flops.train_flops_per_token(config, seq_len)
  stats = jax.devices()[0].memory_stats() or {}
  return {"tokens_per_s": tokens_per_s, "compile_s": compile_s, "loss": float(metrics["loss"]),
          "peak_gb": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
          "mfu": flops.mfu(tokens_per_s, per_token, num_devices=jax.device_count()),
          "gflop_per_token": per_token / 1e9, "device": jax.devices()[0].device_kind,
          "jax": jax.__version__}


def table(header: list[str], rows: list[list[str]]) -> str:
  """A markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def fmt_mfu(value) -> str:
  return "n/a" if value is None else f"{value:.1%}"
