"""Quality per CPU-minute, side by side: nanoGPT's CPU recipe against `yijax quickstart --text` at equal wall time.

  python benchmarks/cpu_quality.py --nanogpt=PATH/TO/nanoGPT --text=../shared/data/tinyshakespeare.txt
  python benchmarks/cpu_quality.py --nanogpt=PATH --text=FILE --budgets=94,300,900

PATH is a checkout of https://github.com/karpathy/nanoGPT (nothing is downloaded here); torch comes from the
test extras. Both train on the same first ~90% of the text (own_text.split_text: the cut is the first line
end after 90% of the bytes) and are scored on the same rest, whole, in bits per byte:

  nanoGPT  `train.py config/train_shakespeare_char.py` with its README's CPU settings (--device=cpu
           --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
           --n_head=4 --n_embd=128 --dropout=0.0), character-level as its prepare.py encodes; 2000 iterations
           at the first budget, and at each later budget the iterations that fill it at the first run's
           speed (a multiple of its eval interval, 250, so the last evaluation saves the final model). Its
           wall time is the train.py process. Its saved model (the best of its evaluations, as train.py keeps
           it) then scores every held-out character after the first, in windows of block_size.
  yijax    `yijax quickstart --text=TRAIN_AND_HELD_OUT --budget_s=W --max_new_tokens=0` where W is nanoGPT's
           measured wall time at that budget; its wall time is that whole process (tokenizer, preparation,
           step measurement, compile, training, held-out score and checkpoint included; no samples).

Printed: one row per budget with both wall times, both bits per byte and yijax / nanoGPT (the goal: <= 0.9).
The budgets run one after the other; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

NANOGPT_ARGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]
NANOGPT_ITERS = 2000
EVAL_INTERVAL = 250


def split(text_path: str, out: str) -> tuple[str, str]:
  """(train text, held-out text): yijax's own split of the file, so both see the same bytes."""
  from yijax.train import own_text

  own_text.split_text([text_path], out)
  read = lambda part: open(os.path.join(out, part, "000.txt"), encoding="utf-8").read()
  return read("train"), read("heldout")


def nanogpt_data(repo: str, train: str, heldout: str) -> str:
  """A scratch copy of the nanoGPT checkout with data/shakespeare_char prepared as its prepare.py does."""
  import numpy as np

  work = tempfile.mkdtemp(prefix="nanogpt-")
  for name in ("train.py", "model.py", "configurator.py"):
    shutil.copy(os.path.join(repo, name), work)
  shutil.copytree(os.path.join(repo, "config"), os.path.join(work, "config"))
  data = os.path.join(work, "data", "shakespeare_char")
  os.makedirs(data)
  chars = sorted(set(train + heldout))
  stoi = {c: i for i, c in enumerate(chars)}
  np.array([stoi[c] for c in train], np.uint16).tofile(os.path.join(data, "train.bin"))
  np.array([stoi[c] for c in heldout], np.uint16).tofile(os.path.join(data, "val.bin"))
  with open(os.path.join(data, "meta.pkl"), "wb") as f:
    pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
  return work


def run_nanogpt(work: str, iters: int) -> dict:
  out_dir = os.path.join(work, f"out-{iters}")
  cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_ARGS, f"--max_iters={iters}",
         f"--lr_decay_iters={iters}", f"--out_dir={out_dir}"]
  start = time.time()
  proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
  wall = time.time() - start
  if proc.returncode:
    raise RuntimeError(f"nanoGPT train.py failed:\n{proc.stderr[-2000:]}")
  vals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", proc.stdout)
  return {"wall_s": wall, "iters": iters, "out_dir": out_dir, "own_val_loss": float(vals[-1][2]) if vals else None,
          "command": " ".join(cmd[1:])}


def score_nanogpt(work: str, out_dir: str) -> dict:
  """Bits per byte of nanoGPT's saved model on the whole held-out split (every character after the first)."""
  import numpy as np
  import torch

  sys.path.insert(0, work)
  from model import GPT, GPTConfig  # nanoGPT's own model.py

  checkpoint = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu", weights_only=False)
  model = GPT(GPTConfig(**checkpoint["model_args"]))
  state = {k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()}
  model.load_state_dict(state)
  model.eval()
  ids = np.fromfile(os.path.join(work, "data", "shakespeare_char", "val.bin"), dtype=np.uint16).astype(np.int64)
  block = checkpoint["model_args"]["block_size"]
  nll, count = 0.0, 0
  with torch.no_grad():
    for start in range(0, len(ids) - 1, block):
      x = torch.from_numpy(ids[start:start + block][None])
      y = torch.from_numpy(ids[start + 1:start + block + 1][None])
      x = x[:, :y.shape[1]]
      logits, _ = model(x, y)
      nll += float(torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum"))
      count += y.shape[1]
  text = open(os.path.join(work, "heldout.txt"), encoding="utf-8").read()
  scored_bytes = len(text[1:].encode("utf-8"))
  assert count == len(text) - 1, (count, len(text))
  return {"bits_per_byte": nll / math.log(2) / scored_bytes, "iter": int(checkpoint["iter_num"])}


def run_yijax(text_file: str, budget_s: float, workdir: str, seed: int) -> dict:
  cmd = [sys.executable, "-m", "yijax.cli", "quickstart", f"--text={text_file}", f"--workdir={workdir}",
         f"--budget_s={budget_s:.1f}", f"--seed={seed}", "--max_new_tokens=0"]
  start = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True)
  wall = time.time() - start
  if proc.returncode:
    raise RuntimeError(f"yijax quickstart failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
  final = json.loads(open(os.path.join(workdir, "eval.jsonl")).read().splitlines()[-1])
  plan = json.load(open(os.path.join(workdir, "quickstart.json")))
  return {"wall_s": wall, "bits_per_byte": final["bits_per_byte"], "steps": plan["steps"],
          "recipe": plan["recipe"], "step_time_s": plan["step_time_s"], "command": "yijax " + " ".join(cmd[3:])}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--nanogpt", required=True, help="path to a nanoGPT checkout (train.py, model.py, config/)")
  parser.add_argument("--text", required=True, help="one text file (tinyshakespeare in the issue)")
  parser.add_argument("--budgets", default="94", help="seconds, comma-separated; the first sets nanoGPT's speed")
  parser.add_argument("--seed", type=int, default=0, help="yijax's seed (nanoGPT's is its own, 1337)")
  parser.add_argument("--nanogpt_iters", type=int, default=NANOGPT_ITERS, help="nanoGPT's iterations at the "
                      "first budget (its README's 2000)")
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args(argv)
  for name in ("train.py", "model.py", "config/train_shakespeare_char.py"):
    if not os.path.exists(os.path.join(args.nanogpt, name)):
      parser.error(f"--nanogpt={args.nanogpt} has no {name}: give a checkout of karpathy/nanoGPT")

  scratch = tempfile.mkdtemp(prefix="cpu-quality-")
  train, heldout = split(args.text, os.path.join(scratch, "split"))
  work = nanogpt_data(args.nanogpt, train, heldout)
  with open(os.path.join(work, "heldout.txt"), "w", encoding="utf-8") as f:
    f.write(heldout)
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; text {args.text}: "
        f"{len(train.encode()):,} train bytes, {len(heldout.encode()):,} held-out bytes\n", flush=True)
  rows, results, speed = [], [], None
  for budget in (float(b) for b in args.budgets.split(",")):
    iters = args.nanogpt_iters if speed is None else max(EVAL_INTERVAL, int(round(budget / speed / EVAL_INTERVAL)) * EVAL_INTERVAL)
    nano = run_nanogpt(work, iters)
    nano.update(score_nanogpt(work, nano["out_dir"]))
    if speed is None:
      speed = nano["wall_s"] / iters
    print(f"nanoGPT {iters} iterations: {nano['wall_s']:.0f} s, {nano['bits_per_byte']:.3f} bits/byte", flush=True)
    ours = run_yijax(args.text, nano["wall_s"], os.path.join(scratch, f"yijax-{int(budget)}"), args.seed)
    print(f"yijax   budget {nano['wall_s']:.0f} s: {ours['wall_s']:.0f} s, {ours['bits_per_byte']:.3f} bits/byte "
          f"({ours['steps']} steps)", flush=True)
    ratio = ours["bits_per_byte"] / nano["bits_per_byte"]
    results.append({"budget_s": budget, "nanogpt": nano, "yijax": ours, "ratio": ratio})
    rows.append([f"{budget:.0f}", f"{nano['wall_s']:.0f}", f"{nano['bits_per_byte']:.3f}", f"{ours['wall_s']:.0f}",
                 f"{ours['bits_per_byte']:.3f}", f"{ratio:.3f}", iters, ours["steps"]])
  shutil.rmtree(work, ignore_errors=True)
  shutil.rmtree(scratch, ignore_errors=True)
  print()
  print(common.table(["budget s", "nanoGPT wall s", "nanoGPT bits/byte", "yijax wall s", "yijax bits/byte",
                      "yijax / nanoGPT", "nanoGPT iters", "yijax steps"], rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
