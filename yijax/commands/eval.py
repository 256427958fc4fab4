"""yijax eval [score] --ckpt=DIR [--data=PREPARED_DIR] [--multiple_choice=FILE.jsonl ...] [--tasks=arith,... --seed=0]
yijax eval checkpoints --run_dir=RUN --tasks=arith,facts,layer_cosine,... [--steps=100,200 --output=FILE]
yijax eval needle --ckpt=DIR --out=DIR [--min_length=1000 --max_length=N --num_lengths=40 --num_depths=10 ...]
yijax eval mia --ckpt=DIR --members=FILE --nonmembers=FILE [--tokenizer=PATH --chunk_len=N --k=30,40,50,60,100 --out=FILE]

Each subcommand has its own flags (`yijax eval needle --help`); without one, `yijax eval --ckpt=...` scores
and `yijax eval --run_dir=...` evaluates a run's checkpoints. score and checkpoints take --mesh=AXIS:SIZE,...
to restore the parameters sharded and score with the trainer's shardings and kernels.

Perplexity and bits per byte on held-out prepared data (packing- and
mask-aware), and multiple-choice accuracy (acc, acc_norm) scored the way
lm-evaluation-harness scores it. `needle` runs the needle-in-a-haystack grid
of Fu et al. (2024) instead (yijax/eval/needle.py): OUT/needle.jsonl
(resumable) and OUT/needle.png. `--run_dir` scores every kept checkpoint of a run
(or a directory of converted Hugging Face checkpoints ordered by tokens seen) and
appends one JSON line per (checkpoint, task, metric) to RUN/eval/checkpoints.jsonl:
killed and rerun, it neither repeats nor skips a pair. `mia` is Min-K% Prob
membership inference (yijax/eval/mia.py). Prints one JSON object; --output writes it.
"""

from __future__ import annotations

import json
import os

from absl import flags

from yijax import paths
from yijax.cli import UsageError
from yijax.commands import mesh_from_flag


SUBCOMMANDS = {
    "score": "perplexity / bits per byte on prepared data, multiple choice, the task battery (--ckpt)",
    "checkpoints": "every kept checkpoint of a run on --tasks, resumable (--run_dir)",
    "needle": "needle in a haystack over context lengths and depths (--ckpt --out)",
    "mia": "Min-K% Prob membership inference (--ckpt --members --nonmembers)",
}


def subcommand(argv) -> str | None:
  """The subcommand named after `yijax eval`: None without one (flags alone: score, or checkpoints with
  --run_dir); an unknown word is returned as is and refused by run."""
  return argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None


def define_flags(fv, argv):
  sub = subcommand(argv)
  if sub not in SUBCOMMANDS:
    sub = None  # refused by run, after the flags parse
  _define_common_flags(fv)
  if sub in (None, "score"):
    _define_score_flags(fv)
  if sub in (None, "checkpoints"):
    _define_checkpoint_flags(fv, also_score=sub is None)
  if sub == "needle":
    _define_needle_flags(fv)
  if sub == "mia":
    _define_mia_flags(fv)


def _define_common_flags(fv):
  flags.DEFINE_string("tokenizer", None, "sentencepiece model (default: the checkpoint's / the data's)",
                      flag_values=fv)
  flags.DEFINE_integer("batch_size", 8, "rows per batch", flag_values=fv)
  flags.DEFINE_boolean("add_bos", False, "prefix BOS to multiple-choice contexts, needle prompts and mia texts",
                       flag_values=fv)
  flags.DEFINE_string("output", None, "write the results JSON here", flag_values=fv)


def _define_score_flags(fv):
  flags.DEFINE_string("ckpt", None, "model dir, checkpoint step dir or run dir", flag_values=fv)
  flags.DEFINE_string("data", None, "prepared data dir (`yijax prepare --out`) for perplexity / bpb", flag_values=fv)
  flags.DEFINE_string("split", "validation", "split of --data to score", flag_values=fv)
  flags.DEFINE_list("sources", None, "sources of --data (default: all of the split)", flag_values=fv)
  flags.DEFINE_integer("seq_len", 0, "packed row length (default: min(1024, model.max_seq_len))", flag_values=fv)
  flags.DEFINE_integer("max_batches", 0, "score at most this many batches (0 = the whole split)", flag_values=fv)
  flags.DEFINE_multi_string("multiple_choice", [], "JSONL task file(s): context, choices, answer", flag_values=fv)
  flags.DEFINE_string("records_dir", None, "write per-example multiple-choice records here", flag_values=fv)
  _define_task_flags(fv)
  _define_mesh_flag(fv)


def _define_task_flags(fv):
  flags.DEFINE_list("tasks", None, "offline battery (yijax/eval/tasks): bpb_docs, bpb_code, cloze_docs, cloze_code, "
                    "arith, induction, facts, and/or JSONL task paths (checkpoints: also layer_cosine)",
                    flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed the --tasks are built from (facts: the seed of their pretraining text)",
                       flag_values=fv)


def _define_mesh_flag(fv):
  flags.DEFINE_string("mesh", "", "score on a device mesh, AXIS:SIZE,... (e.g. fsdp:-1 or fsdp:4,tensor:2): "
                      "parameters restored sharded, batches sharded as in training (default: one device)",
                      flag_values=fv)


def _define_checkpoint_flags(fv, also_score: bool):
  flags.DEFINE_string("run_dir", None, "evaluate every kept checkpoint of this run (or a directory of converted "
                      "Hugging Face checkpoints) on --tasks; appends to DIR/eval/checkpoints.jsonl, resumable",
                      flag_values=fv)
  flags.DEFINE_list("steps", None, "only these checkpoint steps", flag_values=fv)
  if not also_score:  # `yijax eval checkpoints`: its own copy of the task and mesh flags
    _define_task_flags(fv)
    _define_mesh_flag(fv)


def _define_needle_flags(fv):
  from yijax.eval import needle

  flags.DEFINE_string("ckpt", None, "model dir, checkpoint step dir or run dir", flag_values=fv)
  flags.DEFINE_string("out", None, "needle: directory for needle.jsonl and needle.png", flag_values=fv)
  flags.DEFINE_integer("min_length", 0, "needle: shortest context, in tokens (0 = 1000, or max_length / "
                       "num_lengths when that is shorter)", flag_values=fv)
  flags.DEFINE_integer("max_length", 0, "needle: longest context (0 = the model's max_seq_len)", flag_values=fv)
  flags.DEFINE_integer("num_lengths", 40, "needle: context lengths, evenly spaced", flag_values=fv)
  flags.DEFINE_integer("num_depths", 10, "needle: needle depths, evenly spaced over 0..100%", flag_values=fv)
  flags.DEFINE_string("haystack", None, "needle: text file for the haystack (default: the embedded corpus's "
                      "held-out documents)", flag_values=fv)
  flags.DEFINE_string("needle", needle.DEFAULT_NEEDLE, "needle: the sentence hidden in the haystack", flag_values=fv)
  flags.DEFINE_string("question", needle.DEFAULT_QUESTION, "needle: the question asked after it", flag_values=fv)
  flags.DEFINE_string("answer", needle.DEFAULT_ANSWER, "needle: words the output is scored on", flag_values=fv)
  flags.DEFINE_string("template", needle.DEFAULT_TEMPLATE, "needle: prompt with {context} and {question} "
                      "(\\n = newline)", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 50, "needle: greedy tokens decoded per cell", flag_values=fv)
  flags.DEFINE_enum("scoring", "words", list(needle.SCORINGS), "needle: the score the mean and the heatmap use: "
                    "words (the fraction of the answer's words in the output, max 1), fu2024 (Fu et al.'s "
                    "visualize.py: set overlap with their 12-word answer, max 11/12) or rouge1 (their records' "
                    "ROUGE-1 F x 10; needs rouge_score); every record keeps all of them", flag_values=fv)
  flags.DEFINE_enum("layout", "yijax", list(needle.LAYOUTS), "needle: yijax (the prompt fills the context length "
                    "less --max_new_tokens) or fu2024 (the haystack is the length less a 200-token buffer and the "
                    "needle, as in Fu et al.)", flag_values=fv)


def _define_mia_flags(fv):
  from yijax.eval import mia

  flags.DEFINE_string("ckpt", None, "model dir, checkpoint step dir or run dir", flag_values=fv)
  flags.DEFINE_string("out", None, "write the result JSON here (as --output)", flag_values=fv)
  flags.DEFINE_string("members", None, "mia: JSONL of member texts (`text` field), e.g. the forget set",
                      flag_values=fv)
  flags.DEFINE_string("nonmembers", None, "mia: JSONL of non-member texts, e.g. the approximate set", flag_values=fv)
  flags.DEFINE_integer("chunk_len", 0, "mia: tokens per chunk (0 = min(4096, model.max_seq_len))", flag_values=fv)
  flags.DEFINE_list("k", [str(k) for k in mia.DEFAULT_KS], "mia: Min-K% percentages", flag_values=fv)


def run(fv, args):
  from yijax.data import pipeline
  from yijax.data.tokenizer import Tokenizer
  from yijax.eval import multiple_choice, perplexity
  from yijax.train import params_io, scoring

  sub = args[0] if args else None
  if sub is not None and sub not in SUBCOMMANDS or len(args) > 1:
    raise UsageError(f"unknown eval subcommand {' '.join(args)!r}: " + "; ".join(
        f"`yijax eval {name}`: {help_}" for name, help_ in SUBCOMMANDS.items()))
  if sub == "needle":
    return _run_needle(fv)
  if sub == "mia":
    from yijax.eval import mia

    if fv.output and not fv.out:
      fv.out = fv.output
    try:
      return mia.run_mia(fv)
    except ValueError as e:
      raise UsageError(str(e)) from None
  if sub == "checkpoints" or ("run_dir" in fv and fv.run_dir):
    return _run_checkpoints(fv)
  if not fv.ckpt:
    raise UsageError("--ckpt is required")
  if not fv.data and not fv.multiple_choice and not fv.tasks:
    raise UsageError("nothing to evaluate: give --data (perplexity), --multiple_choice=FILE.jsonl "
                     "and/or --tasks=arith,facts,...")
  location = params_io.locate_model(fv.ckpt)
  mesh = mesh_from_flag(fv.mesh)
  config, params = params_io.load_model(fv.ckpt, mesh=mesh)
  config = config.replace(remat_policy="none")
  scorer = scoring.Scorer(config, mesh)
  results: dict = {"ckpt": paths.resolve(fv.ckpt, "--ckpt")}
  tokenizer_path = fv.tokenizer or location.tokenizer
  if fv.data:
    data_cfg = pipeline.default_data_config()
    manifest = pipeline.read_manifest(fv.data, fv.split)
    names = fv.sources or pipeline.available_sources(manifest, fv.split)
    with data_cfg.unlocked():
      data_cfg.prepared_dir = fv.data
      data_cfg.sources = {name: 1.0 for name in names}
    pipeline.check_tokenizer(manifest, config.vocab_size)
    seq_len = fv.seq_len or min(1024, config.max_seq_len)
    batches = pipeline.eval_batches(data_cfg, fv.split, seq_len, fv.batch_size, fv.max_batches or None)
    tokenizer_path = tokenizer_path or manifest["tokenizer"]["path"]
    data_tokenizer = Tokenizer(manifest["tokenizer"]["path"])
    results["perplexity"] = {"data": fv.data, "split": fv.split, "sources": names, **perplexity.evaluate_perplexity(
        config, params, batches, data_tokenizer.byte_lengths(), scorer=scorer)}
  if fv.multiple_choice:
    if not tokenizer_path:
      raise UsageError("--multiple_choice needs a tokenizer: --tokenizer=PATH (none in --ckpt)")
    tokenizer = Tokenizer(tokenizer_path)
    results["multiple_choice"] = {}
    for path in fv.multiple_choice:
      name = os.path.splitext(os.path.basename(path))[0]
      records = os.path.join(fv.records_dir, name + ".jsonl") if fv.records_dir else None
      scored = multiple_choice.score_multiple_choice(config, params, tokenizer, multiple_choice.load_tasks(path),
                                                     batch_size=fv.batch_size, add_bos=fv.add_bos,
                                                     records_path=records, scorer=scorer)
      results["multiple_choice"][name] = {k: v for k, v in scored.items() if k != "records"}
  if fv.tasks:
    from yijax.eval import tasks

    if not tokenizer_path:
      raise UsageError("--tasks needs a tokenizer: --tokenizer=PATH (none in --ckpt)")
    add_bos = fv.add_bos if fv["add_bos"].present else None  # absent: each task's default (evaluate_tasks)
    results["tasks"] = tasks.evaluate_tasks(config, params, Tokenizer(tokenizer_path), fv.tasks, seed=fv.seed,
                                            batch_size=fv.batch_size, add_bos=add_bos, scorer=scorer)
  text = json.dumps(results, indent=2)
  print(text)
  if fv.output:
    with open(fv.output, "w") as f:
      f.write(text + "\n")
  return 0


def _run_checkpoints(fv):
  from yijax.eval import checkpoints

  if not fv.run_dir:
    raise UsageError("yijax eval checkpoints needs --run_dir=RUN")
  if not fv.tasks:
    raise UsageError("--run_dir needs --tasks=NAMES (battery task names, JSONL paths or layer_cosine)")
  if "ckpt" in fv and (fv.ckpt or fv.data or fv.multiple_choice):
    raise UsageError("--run_dir evaluates the run's checkpoints on --tasks; drop --ckpt/--data/--multiple_choice")
  try:
    steps = [int(s) for s in fv.steps] if fv.steps else None
  except ValueError:
    raise UsageError(f"--steps={','.join(fv.steps)} must be integers, e.g. --steps=100,200") from None
  out = checkpoints.evaluate_checkpoints(fv.run_dir, list(fv.tasks), out_path=fv.output, steps=steps, seed=fv.seed,
                                         tokenizer_path=fv.tokenizer, options={"batch_size": fv.batch_size},
                                         mesh=mesh_from_flag(fv.mesh))
  records = checkpoints.load_results(out)
  print(json.dumps({"run_dir": paths.resolve(fv.run_dir, "--run_dir"), "results": out, "records": len(records)}))
  return 0


def _run_needle(fv):
  from yijax.data.tokenizer import Tokenizer
  from yijax.eval import needle
  from yijax.train import params_io

  if not fv.ckpt:
    raise UsageError("--ckpt is required")
  if not fv.out:
    raise UsageError("yijax eval needle needs --out=DIR (needle.jsonl and needle.png go there)")
  location = params_io.locate_model(fv.ckpt)
  tokenizer_path = fv.tokenizer or location.tokenizer
  if not tokenizer_path:
    raise UsageError("yijax eval needle needs a tokenizer: --tokenizer=PATH (none in --ckpt)")
  config, params = params_io.load_model(fv.ckpt)
  task = needle.NeedleTask(fv.needle, fv.question, fv.answer, fv.template.replace("\\n", "\n"))
  summary = needle.evaluate_to_dir(
      config.replace(remat_policy="none"), params, Tokenizer(tokenizer_path), fv.out, min_length=fv.min_length,
      max_length=fv.max_length, num_lengths=fv.num_lengths, num_depths=fv.num_depths, haystack_path=fv.haystack,
      task=task, max_new_tokens=fv.max_new_tokens, batch_size=fv.batch_size, add_bos=fv.add_bos,
      model_id=location.params_dir, layout=fv.layout, scoring=fv.scoring)
  print(f"needle: mean score {summary['mean_score']:.3f} ({fv.scoring}) over {summary['cells']} cells")
  text = json.dumps({"ckpt": paths.resolve(fv.ckpt, "--ckpt"), "needle": summary}, indent=2)
  print(text)
  if fv.output:
    with open(fv.output, "w") as f:
      f.write(text + "\n")
  return 0
