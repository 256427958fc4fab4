"""The recipe sweep behind `yijax quickstart --text`: held-out bits per byte of each recipe at a budget.

  python benchmarks/cpu_recipes.py --text=../shared/data/tinyshakespeare.txt --budget_s=94
  python benchmarks/cpu_recipes.py --text=FILE --budget_s=300 --recipes='{"hidden_size": 192}' \
      --recipes='{"hidden_size": 256, "mlp_dim": 704}'

Each recipe runs the whole budgeted quickstart (yijax/train/own_text.py: split, tokenizer, preparation, step
measurement, training with the schedule fitted to the budget, the held-out score) in its own process and
fresh directory, one after the other (they share the cores). A recipe is a JSON object of `Recipe` fields
changed from the defaults; without --recipes the built-in grid for the budget runs. Printed: the recipe,
steps, measured step time, tokens trained, wall seconds and held-out bits per byte, best first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

# changes from the budget's current recipe (own_text.recipe_for) tried by default
GRID = [
    {},
    {"vocab_size": 1024},
    {"vocab_size": 2048},
    {"vocab_size": 1024, "lr": 6e-3},
    {"vocab_size": 1024, "batch_size": 8},
    {"vocab_size": 1024, "batch_size": 32},
    {"vocab_size": 1024, "seq_len": 64, "batch_size": 32},
    {"vocab_size": 1024, "seq_len": 256, "batch_size": 8},
    {"vocab_size": 1024, "num_layers": 2},
    {"vocab_size": 1024, "num_layers": 6},
    {"vocab_size": 1024, "hidden_size": 192, "mlp_dim": 512, "num_heads": 6, "num_kv_heads": 6},
    {"vocab_size": 1024, "hidden_size": 96, "mlp_dim": 256, "num_heads": 3, "num_kv_heads": 3},
]


def run_one(args) -> dict:
  from yijax.train import own_text

  base = own_text.recipe_for(args.budget_s)
  recipe = own_text.Recipe(**{**own_text.dataclasses.asdict(base), **json.loads(args.worker)})
  workdir = tempfile.mkdtemp(prefix="recipe-")
  try:
    start = time.time()
    out = own_text.train_on_text(args.text.split(","), workdir, args.budget_s, args.seed, recipe=recipe)
    wall = time.time() - start
    final = json.loads(open(os.path.join(workdir, "eval.jsonl")).read().splitlines()[-1])
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  plan = out["plan"]
  return {"recipe": plan["recipe"], "steps": plan["steps"], "step_time_s": plan["step_time_s"],
          "tokens": plan["steps"] * recipe.batch_size * recipe.seq_len, "wall_s": wall,
          "bits_per_byte": final["bits_per_byte"]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--text", required=True, help="text files, comma-separated")
  parser.add_argument("--budget_s", type=float, default=94.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--recipes", action="append", help="JSON object of Recipe changes (repeatable)")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    common.emit(run_one(args))
    return 0
  recipes = [json.loads(r) for r in args.recipes] if args.recipes else GRID
  print(f"budget {args.budget_s:.0f} s, seed {args.seed}, text {args.text}\n", flush=True)
  results = []
  for changes in recipes:
    r = common.run_worker(__file__, [f"--text={args.text}", f"--budget_s={args.budget_s}", f"--seed={args.seed}",
                                     f"--worker={json.dumps(changes)}"])
    r["changes"] = changes
    results.append(r)
    print(json.dumps(r), flush=True)
  rows = []
  for r in sorted(results, key=lambda r: r.get("bits_per_byte", float("inf"))):
    if "error" in r:
      rows.append([json.dumps(r["changes"]), "-", "-", "-", "-", r["error"][:80]])
      continue
    rows.append([json.dumps(r["changes"]) if r["changes"] else "(default)", r["steps"], f"{r['step_time_s']:.3f}",
                 f"{r['tokens']:,}", f"{r['wall_s']:.0f}", f"{r['bits_per_byte']:.3f}"])
  print()
  print(common.table(["recipe changes", "steps", "s/step", "tokens", "wall s", "bits/byte"], rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
