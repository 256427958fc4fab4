"""Exact resume: a run killed with SIGKILL (or stopped by SIGTERM) and rerun
logs the same per-step losses, bit for bit, as an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ARGS = [
    "--config=configs/pretrain/tiny.py",
    "--config.model.num_layers=2",
    "--config.train.steps=24",
    "--config.train.batch_size=8",
    "--config.train.seq_len=128",
    "--config.train.progress_bar=False",
    "--config.optimizer.warmup_steps=4",
    "--config.checkpoint.every_steps=4",
    "--config.checkpoint.async_save=True",
    "--config.eval.batches=0",
]


def _command(workdir, data_dir):
  return [sys.executable, "-m", "yijax.cli", "train", f"--workdir={workdir}", *ARGS,
          f"--config.data.prepared_dir={data_dir}"]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [(r["step"], r["loss"], r["grad_norm"]) for r in records]


def _run(workdir, data_dir):
  result = subprocess.run(_command(workdir, data_dir), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _start_and_signal(workdir, data_dir, at_step, sig):
  process = subprocess.Popen(_command(workdir, data_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline:
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= at_step:
      break
    if process.poll() is not None:
      raise AssertionError(process.stdout.read().decode()[-3000:])
    time.sleep(0.05)
  process.send_signal(sig)
  output = process.communicate(timeout=300)[0].decode()
  return process.returncode, output


@pytest.fixture(scope="module")
def straight(tmp_path_factory, prepared_data):
  workdir = tmp_path_factory.mktemp("straight")
  _run(workdir, prepared_data)
  return _losses(workdir), workdir


def test_kill_9_then_rerun_matches_uninterrupted_run(tmp_path, prepared_data, straight):
  straight, _ = straight
  assert [s for s, _, _ in straight] == list(range(1, 25))
  workdir = tmp_path / "killed"
  code, _ = _start_and_signal(workdir, prepared_data, at_step=9, sig=signal.SIGKILL)
  assert code == -signal.SIGKILL
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  assert steps and max(steps) < 24  # it really stopped part way
  code, output = _start_and_signal(workdir, prepared_data, at_step=17, sig=signal.SIGTERM)
  assert code == 0 and "preempted: saved step" in output, output[-2000:]
  _run(workdir, prepared_data)
  assert _losses(workdir) == straight


def test_rerunning_a_finished_run_changes_nothing(tmp_path, prepared_data, straight):
  workdir = tmp_path / "done"
  shutil.copytree(straight[1], workdir)  # a finished run (rerunning in place would not move it)
  before = (workdir / "metrics.jsonl").read_text()
  result = _run(workdir, prepared_data)
  assert "resumed" in result.stdout
  assert (workdir / "metrics.jsonl").read_text() == before
