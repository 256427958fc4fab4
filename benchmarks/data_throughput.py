"""Packed tokens/s of the train input pipeline (goal: >= 10x what a GPU consumes, ~460K tokens/s).

  python benchmarks/data_throughput.py --seq_len=4096 --batch=4 [--prepared_dir=DIR]

Without --prepared_dir it trains a small tokenizer on the embedded corpus and
prepares the corpus into a temporary dir first (both timed). Tokens/s counts
real tokens (segment id > 0); slots/s counts every position of the batch.
Prints one table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

from yijax.data import pipeline

GOAL = 460_000  # 10x the ~46K tokens/s an H100 trains the 1.25B model at


def prepare_embedded(directory: str, vocab_size: int, num_workers: int) -> tuple[str, float]:
  """Tokenizer + embedded corpus prepared under `directory`; returns (dir, seconds)."""
  from yijax.data import prepare

  start = time.perf_counter()
  manifest = prepare.prepare_embedded(directory, vocab_size, sample_mb=2.0, num_workers=num_workers,
                                      progress=False)
  seconds = time.perf_counter() - start
  for split, sources in manifest["splits"].items():
    for name, entry in sources.items():
      print(f"  {split:<10} {name:<12} {entry['documents']:>5} documents {entry['tokens']:>10,} tokens "
            f"{entry['bytes'] / 2**20:6.2f} MiB")
  return directory, seconds


def measure(data_cfg, seq_len: int, batch: int, batches: int) -> dict[str, float]:
  start = time.perf_counter()
  iterator = pipeline.train_iterator(data_cfg, seq_len, batch, seed=0, process_index=0, process_count=1)
  next(iterator)
  first_s = time.perf_counter() - start
  for _ in range(10):  # warm the read-ahead and packing buffers
    next(iterator)
  real = slots = 0
  start = time.perf_counter()
  for _ in range(batches):
    segments = next(iterator)["segment_ids"]
    real += int(np.count_nonzero(segments))
    slots += segments.size
  seconds = time.perf_counter() - start
  iterator.close()
  return {"tokens_s": real / seconds, "slots_s": slots / seconds, "padding": 1 - real / slots, "first_s": first_s}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--prepared_dir", default=None, help="a `yijax prepare` output (default: embedded, temp)")
  parser.add_argument("--sources", default="python_code=0.7,python_docs=0.3", help="NAME=SHARE,...")
  parser.add_argument("--seq_len", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--batches", type=int, default=400, help="batches timed per row")
  parser.add_argument("--vocab_size", type=int, default=4096, help="tokenizer trained for the temp preparation")
  parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
  args = parser.parse_args(argv)
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {sys.version.split()[0]}  seq_len {args.seq_len}  batch {args.batch}", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    prepared_dir = args.prepared_dir
    if prepared_dir is None:
      prepared_dir, seconds = prepare_embedded(tmp, args.vocab_size, args.num_workers)
      print(f"tokenizer ({args.vocab_size} pieces, 2 MiB sample) + prepare (embedded corpus, "
            f"{args.num_workers} workers): {seconds:.1f} s", flush=True)
    rows = [("default (2 read threads, 64 packing bins)", {}),
            ("0 read threads (reads in the prefetch thread)", {"prefetch.read_threads": 0}),
            ("4 packing bins (= batch)", {"packing_bins": 4}),
            ("per_source upsampling (>1024 tokens, keep 0.3)",
             {"length_upsampling.mode": "per_source", "length_upsampling.threshold": 1024,
              "length_upsampling.keep_short_prob": 0.3}),
            ("no background batch prefetch", {"prefetch.batches": 0})]
    print("\n| pipeline | tokens/s | slots/s | padding | first batch s | vs goal |\n|---|---|---|---|---|---|")
    for label, overrides in rows:
      cfg = pipeline.default_data_config()
      cfg.prepared_dir = prepared_dir
      cfg.sources = {k: float(v) for k, v in (s.split("=") for s in args.sources.split(","))}
      for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
          node = node[p]
        node[leaf] = value
      result = measure(cfg, args.seq_len, args.batch, args.batches)
      print(f"| {label} | {result['tokens_s']:,.0f} | {result['slots_s']:,.0f} | {100 * result['padding']:.1f}% | "
            f"{result['first_s']:.2f} | {result['tokens_s'] / GOAL:.1f}x |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
