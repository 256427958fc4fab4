"""yijax quickstart [--workdir=DIR]: the whole loop on a fresh machine, offline, in minutes.

Trains a tokenizer on the embedded corpus (Python's own documentation and
sources) and prepares it (once, into a cache), trains the tiny Yi model,
evaluates held-out perplexity and bits per byte, and prints samples.

yijax quickstart --text=FILE[,FILE...] --workdir=DIR [--budget_s=SECONDS]: the same on your own text,
within a wall-time budget, everything included (yijax/train/own_text.py).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags


def define_flags(fv, argv):
  flags.DEFINE_string("workdir", "runs/quickstart", "run directory (rerun to resume)", flag_values=fv)
  flags.DEFINE_integer("steps", 300, "training steps (tiny model, batch 8 x 256 tokens)", flag_values=fv)
  flags.DEFINE_string("prompt", "def ", "prompt for the samples", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 48, "tokens per sample (0: no samples)", flag_values=fv)
  flags.DEFINE_list("text", None, "your own text files: train a tokenizer and a model on their first 90%, score "
                    "bits per byte on the rest", flag_values=fv)
  flags.DEFINE_float("budget_s", 300.0, "with --text: wall-time budget in seconds, everything included",
                     flag_values=fv)
  flags.DEFINE_integer("seed", 0, "with --text: parameter init and data order", flag_values=fv)


def run(fv, args):
  from yijax.train import loop
  from yijax.train.config import tiny_pretrain_config

  start = time.time()
  if fv.text:
    return _own_text(fv, start)
  config = tiny_pretrain_config()
  config.train.steps = fv.steps
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, max(fv.steps // 10, 1))
  config.checkpoint.every_steps = max(fv.steps // 3, 1)
  config.eval.every_steps = max(fv.steps // 3, 1)
  result = loop.train(config, fv.workdir)
  metrics_path = os.path.join(fv.workdir, "metrics.jsonl")
  with open(metrics_path) as f:
    losses = [json.loads(line)["loss"] for line in f]
  head, tail = sum(losses[:10]) / len(losses[:10]), sum(losses[-10:]) / len(losses[-10:])
  print(f"\ntraining loss: {head:.3f} (first 10 steps) -> {tail:.3f} (last 10 steps)")
  evals = {k[5:]: v for k, v in result.items() if k.startswith("eval/")}
  if evals:
    print(f"held-out: loss {evals['loss']:.3f}  perplexity {evals['perplexity']:.1f}  "
          f"bits/byte {evals.get('bits_per_byte', float('nan')):.3f}")
  _samples(fv.workdir, fv.prompt, fv.max_new_tokens)
  print(f"\nrun dir: {os.path.abspath(fv.workdir)}  ({time.time() - start:.0f} s)")
  print(f"TensorBoard: tensorboard --logdir {os.path.abspath(fv.workdir)}/tensorboard")
  print(f"more: yijax generate --ckpt={fv.workdir} --prompt='import ' --max_new_tokens=64 --temperature=0.8")
  return 0


def _samples(workdir: str, prompt_text: str, max_new_tokens: int) -> None:
  if max_new_tokens <= 0:
    return
  from yijax.data.tokenizer import Tokenizer
  from yijax.eval.generate import Generator, Sampling
  from yijax.train import params_io

  location = params_io.locate_model(workdir)
  model_config, params = params_io.load_model(workdir)
  tokenizer = Tokenizer(location.tokenizer)
  prompt = tokenizer.encode(prompt_text, add_bos=True)
  generator = Generator(model_config, params)
  for name, sampling in (("greedy", Sampling()), ("sampled (T=0.8, top_p=0.95)", Sampling(0.8, 0, 0.95))):
    ids = generator.generate([prompt], max_new_tokens, sampling, seed=0, stop_ids=[tokenizer.eos_id])[0]
    print(f"\n--- {name} ---\n{prompt_text}{tokenizer.decode([i for i in ids if i != tokenizer.eos_id])}")


def _own_text(fv, start: float) -> int:
  from yijax.train import own_text

  # as a command, the budget counts from the process's start (interpreter and imports included), as a wall
  # clock would; called inside a longer-lived process (a notebook, tests) it counts from this call
  started = own_text.process_start_time()
  started = started if started is not None and time.time() - started < 30 else None
  out = own_text.train_on_text(fv.text, fv.workdir, fv.budget_s, fv.seed, start=started)
  plan, result = out["plan"], out["result"]
  print(f"\nrecipe: {plan['recipe']}; {plan['steps']} steps at {plan['step_time_s']:.3f} s/step (measured)")
  del result  # a rerun of a finished run returns no evaluation: read the final one from eval.jsonl
  with open(os.path.join(fv.workdir, "eval.jsonl")) as f:
    final = json.loads(f.read().splitlines()[-1])
  print(f"held-out ({plan['heldout_bytes']:,} bytes, the last 10% of each file): "
        f"bits/byte {final['bits_per_byte']:.4f}  loss {final['loss']:.4f}")
  prompt = fv.prompt if fv.prompt != "def " else "\n"
  _samples(fv.workdir, prompt, fv.max_new_tokens)
  print(f"\nrun dir (a model dir): {os.path.abspath(fv.workdir)}  (trained and scored in {plan['seconds']:.0f} s "
        f"of a {fv.budget_s:.0f} s budget; {time.time() - start:.0f} s with the samples)")
  print(f"score other text: yijax prepare --source=x=FILE --tokenizer={fv.workdir} --out=DATA && "
        f"yijax eval --ckpt={fv.workdir} --data=DATA")
  return 0
