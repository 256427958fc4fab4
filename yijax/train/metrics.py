"""Metrics of a run: WORKDIR/metrics.jsonl, TensorBoard events, a progress bar.

Only process 0 writes. On resume, lines after the restored step are dropped
first, so the file of a resumed run reads like that of an uninterrupted one.

A gs:// workdir cannot be appended to: the writer keeps the files in a local
staging directory and uploads them whole (metrics, eval, TensorBoard events)
every `sync_every_s` seconds, at every checkpoint and at the end; what a
preemption loses after the last checkpoint is what resuming drops anyway.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import jax

from yijax import paths

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"


def _plain(value: Any) -> Any:
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def truncate_after(path: str, step: int) -> None:
  """Keeps only records with record['step'] <= step."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError):
        continue
  paths.write_text(path, "".join(kept))


class MetricsWriter:
  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True, sync_every_s: float = 60.0):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.remote = paths.is_url(workdir)
    self.sync_every_s = sync_every_s
    self._files = {}
    self._tb = None
    self._last_sync = time.monotonic()
    if not self.active:
      return
    self.local_dir = tempfile.mkdtemp(prefix="yijax-metrics-") if self.remote else workdir
    for name in (METRICS_FILE, EVAL_FILE):
      if self.remote and paths.exists(paths.join(workdir, name)):
        paths.copy_file(paths.join(workdir, name), os.path.join(self.local_dir, name))
      truncate_after(os.path.join(self.local_dir, name), resume_step)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(self.local_dir, "tensorboard"), purge_step=resume_step + 1)
      except ImportError:
        self._tb = None
    self.sync()

  def write(self, step: int, metrics: dict[str, Any], file: str = METRICS_FILE) -> None:
    if not self.active:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    if file not in self._files:
      self._files[file] = open(os.path.join(self.local_dir, file), "a")
    self._files[file].write(json.dumps(record) + "\n")
    self._files[file].flush()
    if self._tb is not None:
      prefix = "eval/" if file == EVAL_FILE else "train/"
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(prefix + key, value, step)
    if self.remote and time.monotonic() - self._last_sync >= self.sync_every_s:
      self.sync()

  def sync(self) -> None:
    """Uploads the staged files to a remote workdir (a local workdir is written in place)."""
    self._last_sync = time.monotonic()
    if not (self.active and self.remote):
      return
    if self._tb is not None:
      self._tb.flush()
    paths.copy_tree(self.local_dir, self.workdir)

  def close(self) -> None:
    for f in self._files.values():
      f.close()
    self._files = {}
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self.active and self.remote:
      self.sync()
      shutil.rmtree(self.local_dir, ignore_errors=True)


class Progress:
  """A tqdm bar over steps showing loss, tokens/s and ETA (process 0, optional)."""

  def __init__(self, total: int, initial: int, enabled: bool):
    self.bar = None
    if enabled and jax.process_index() == 0:
      from tqdm import tqdm

      self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)

  def update(self, step: int, loss: float, tokens_per_s: float) -> None:
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
      self.bar.refresh()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class Throughput:
  """Tokens/s and step time over the steps since the last report."""

  def __init__(self):
    self.last_time = time.perf_counter()

  def tick(self, tokens: int) -> tuple[float, float]:
    now = time.perf_counter()
    elapsed, self.last_time = now - self.last_time, now
    return tokens / max(elapsed, 1e-9), elapsed
