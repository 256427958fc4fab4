"""`yijax <command> [flags]`: the command line.

Each command declares its flags on its own absl FlagValues, so `yijax CMD
--help` lists exactly that command's flags; `--config=FILE[:ARG]` plus
`--config.a.b=value` overrides come from ml_collections.config_flags.
Command bodies live in the library; this file only parses and dispatches.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import sys

from absl import flags

from yijax.errors import ConfigError, UsageError, YijaxError  # noqa: F401 - UsageError: commands import it here


@dataclasses.dataclass(frozen=True)
class Command:
  help: str
  module: str  # yijax.commands.<module>: defines define_flags(fv, argv) and run(fv, args)


COMMANDS: dict[str, Command] = {
    "quickstart": Command("offline: tokenizer + data from the embedded corpus, train tiny, eval, sample", "quickstart"),
    "model-info": Command("parameter counts and bytes of a model config (allocates nothing)", "model_info"),
    "convert": Command("hf-to-yijax | yijax-to-hf: Hugging Face safetensors <-> yijax model dirs", "convert"),
    "generate": Command("sample from a model dir or run dir (KV-cache decoding; --chat: chat prompts)", "generate"),
    "chat": Command("talk to a chat model in the terminal: --ckpt=DIR [--system=TEXT] (history kept, streamed)",
                    "chat"),
    "train": Command("train or resume a run: --config=FILE --workdir=DIR [--config.x=v]", "train"),
    "prepare": Command("raw text / JSONL / TFDS -> token-id ArrayRecord shards (parallel, resumable)", "prepare"),
    "curate": Command("Yi's data cascade: heuristic rules, language id, learned scorers, exact / MinHash / "
                      "sub-document dedup, clusters; kept/ + removed/ + report (resumable, datatrove)", "curate"),
    "tokenizer": Command("train: a sentencepiece tokenizer with Yi's settings (files / embedded corpus)", "tokenizer"),
    "eval": Command("perplexity / bits per byte on prepared data, multiple-choice accuracy", "eval"),
    "experiment": Command("run a study: every stage of experiments/<study>/config.py:<scale>, resumable",
                          "experiment"),
    "launch": Command("tpu | slurm: run the same `yijax train` on every host of a TPU pod or GPU cluster "
                      "(--dry_run prints the commands)", "launch"),
    "surgery": Command("grow a dense model in depth: --stack | --interpolate | --yi_upscale | --layer_order",
                       "surgery"),
    "analyze": Command("layer-cosine: per-layer input/output cosine of a model (Yi's up-scaling rule)", "analyze"),
    "roundtrip-demo": Command("tiny model -> HF export -> import -> generate, offline", "roundtrip_demo"),
}



def usage() -> str:
  width = max(len(n) for n in COMMANDS)
  lines = ["usage: yijax <command> [flags]   (yijax <command> --help for its flags)", "", "commands:"]
  lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()]
  return "\n".join(lines)


def _load(name: str):
  return importlib.import_module(f"yijax.commands.{COMMANDS[name].module}")


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return 0
  name = argv[1]
  if name not in COMMANDS:
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    print(f"yijax: unknown command {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""), file=sys.stderr)
    print(usage(), file=sys.stderr)
    return 2
  module = _load(name)
  if not flags.FLAGS.is_parsed():  # libraries that read absl's global flags (tokamax) get their defaults
    flags.FLAGS.mark_as_parsed()
  fv = flags.FlagValues()
  prog = [f"yijax {name}"] + argv[2:]
  try:
    module.define_flags(fv, prog)
  except ConfigError as e:  # e.g. --config names neither a file nor a preset
    print(f"yijax {name}: {_clean(e)}", file=sys.stderr)
    return 2
  if any(a in ("-h", "--help", "--helpfull") for a in argv[2:]):
    print(f"yijax {name}: {COMMANDS[name].help}\n")
    print(fv.get_help())
    return 0
  try:
    if hasattr(module, "check_argv"):
      module.check_argv(prog)
    rest = fv(prog)
  except (flags.Error, ConfigError, AttributeError, KeyError) as e:
    print(f"yijax {name}: {_clean(e)}", file=sys.stderr)
    return 2
  try:
    return module.run(fv, rest[1:]) or 0
  except YijaxError as e:  # a user error: one line; anything else is a bug and shows its traceback
    if os.environ.get("YIJAX_TRACEBACK"):
      raise
    print(f"yijax {name}: error: {e}", file=sys.stderr)
    return 1


def _clean(error: Exception) -> str:
  text = str(error)
  return text.strip("'\"").replace("\\n", " ").replace("\\'", "'")


def entry_point() -> None:
  sys.exit(main())


if __name__ == "__main__":
  entry_point()
