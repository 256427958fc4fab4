"""Two local processes (jax.distributed over 127.0.0.1, gloo, 4 CPU devices each)
train on the global 8-device mesh through `yijax train` and log the same
losses, held-out loss and in-training task scores as one process with 8 devices."""

import json
import os
import socket
import subprocess
import sys

CONFIG = """
from yijax.train.config import tiny_pretrain_config


def get_config(arg=None):
  config = tiny_pretrain_config()
  config.eval.tasks = ["arith"]  # scored in training on the run's mesh: across both processes
  return config
"""

ARGS = [
    "--config.model.num_layers=2",
    "--config.train.steps=3",
    "--config.optimizer.warmup_steps=1",
    "--config.train.batch_size=8",
    "--config.train.seq_len=64",
    "--config.train.progress_bar=False",
    "--config.checkpoint.every_steps=3",
    "--config.eval.batches=2",
    "--config.eval.every_steps=0",
    "--config.data.logical_shards=2",
]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _losses(workdir):
  return [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_two_processes_match_one(tmp_path, prepared_data):
  (tmp_path / "config.py").write_text(CONFIG)
  command = [sys.executable, "-m", "yijax.cli", "train", f"--config={tmp_path / 'config.py'}", *ARGS,
             f"--config.data.prepared_dir={prepared_data}"]
  single = tmp_path / "single"
  result = subprocess.run(command + [f"--workdir={single}"], env=_env(8), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  multi = tmp_path / "multi"
  port = _free_port()
  processes = [
      subprocess.Popen(command + [
          f"--workdir={multi}", "--config.distributed.enabled=true",
          f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
      ], env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)
  ]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  single_losses, multi_losses = _losses(single), _losses(multi)
  assert len(multi_losses) == 3
  for a, b in zip(multi_losses, single_losses):
    assert abs(a - b) <= 1e-5 * abs(b)
  evals = [json.loads(line) for line in open(multi / "eval.jsonl")]
  single_evals = [json.loads(line) for line in open(single / "eval.jsonl")]
  assert abs(evals[-1]["loss"] - single_evals[-1]["loss"]) <= 1e-5 * single_evals[-1]["loss"]
  assert evals[-1]["tasks/arith/acc"] == single_evals[-1]["tasks/arith/acc"]
  assert evals[-1]["tasks/arith/acc_norm"] == single_evals[-1]["tasks/arith/acc_norm"]
  assert sorted(os.listdir(multi / "checkpoints" / "3" / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
