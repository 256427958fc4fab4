"""yijax tokenizer train --input=FILES --vocab_size=N --out=DIR [--embedded] [--chat_tokens]
yijax tokenizer add-chat-tokens --tokenizer=PATH --out=DIR   (<|im_start|>/<|im_end|> as single tokens, same size)"""

from __future__ import annotations

import glob
import os
import tempfile

from absl import flags

from yijax.cli import UsageError

ACTIONS = ("train", "add-chat-tokens")


def define_flags(fv, argv):
  flags.DEFINE_list("input", [], "text files or globs to train on (sentencepiece reads one sentence per line)",
                    flag_values=fv)
  flags.DEFINE_boolean("embedded", False, "also train on a sample of the embedded corpus' train split "
                       "(Python docs + stdlib sources)", flag_values=fv)
  flags.DEFINE_float("embedded_mb", 4.0, "size of that sample, in MiB", flag_values=fv)
  flags.DEFINE_integer("vocab_size", None, "number of pieces (Yi: 64000)", flag_values=fv)
  flags.DEFINE_string("out", None, "output directory: tokenizer.model + tokenizer_meta.json", flag_values=fv)
  flags.DEFINE_integer("num_threads", os.cpu_count() or 1, "sentencepiece trainer threads", flag_values=fv)
  flags.DEFINE_integer("input_sentence_size", 2_000_000, "lines sampled for training (0 = all)", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "sentencepiece sampling seed", flag_values=fv)
  flags.DEFINE_boolean("chat_tokens", False, "train: make <|im_start|> and <|im_end|> single tokens (ids 3, 4; "
                       "ChatML chat fine-tuning)", flag_values=fv)
  flags.DEFINE_string("tokenizer", None, "add-chat-tokens: the tokenizer to copy (.model or dir)", flag_values=fv)


def _expand(patterns: list[str]) -> list[str]:
  files = []
  for pattern in patterns:
    matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not matched:
      raise UsageError(f"--input={pattern} matched no files")
    files += matched
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise UsageError(f"--input file(s) not found: {', '.join(missing)}")
  return files


def run(fv, args):
  from yijax.data import corpus
  from yijax.data.tokenizer import CHAT_TOKENS, train_tokenizer

  if len(args) != 1 or args[0] not in ACTIONS:
    raise UsageError(f"say the action: yijax tokenizer {{{' | '.join(ACTIONS)}}} ... (got {args})")
  if not fv.out:
    raise UsageError("--out is required")
  if args[0] == "add-chat-tokens":
    return _add_chat_tokens(fv)
  if not fv.vocab_size or fv.vocab_size < 16:
    raise UsageError(f"--vocab_size={fv.vocab_size}: give the number of pieces, e.g. --vocab_size=8000")
  inputs = _expand(fv.input)
  if not inputs and not fv.embedded:
    raise UsageError("give --input=FILES and/or --embedded")
  with tempfile.TemporaryDirectory() as tmp:
    if fv.embedded:
      sample = os.path.join(tmp, "embedded_sample.txt")
      size = corpus.sample_text(sample, int(fv.embedded_mb * 2**20))
      print(f"embedded corpus sample: {size / 2**20:.2f} MiB of the train split")
      inputs.append(sample)
    tokenizer = train_tokenizer(inputs, fv.vocab_size, fv.out, num_threads=fv.num_threads, seed=fv.seed,
                                input_sentence_size=fv.input_sentence_size,
                                user_defined_symbols=CHAT_TOKENS if fv.chat_tokens else ())
  print(f"wrote {tokenizer.path}: {tokenizer.vocab_size} pieces, bos {tokenizer.bos_id}, eos {tokenizer.eos_id}, "
        f"sha256 {tokenizer.checksum[:16]}")
  return 0


def _add_chat_tokens(fv) -> int:
  from yijax.data.tokenizer import CHAT_TOKENS, add_chat_tokens

  if not fv.tokenizer:
    raise UsageError("add-chat-tokens needs --tokenizer=PATH (a .model file or a dir with tokenizer.model)")
  tokenizer = add_chat_tokens(fv.tokenizer, fv.out)
  ids = {piece: tokenizer.encode(piece)[0] for piece in CHAT_TOKENS}
  print(f"wrote {tokenizer.path}: {tokenizer.vocab_size} pieces, " + ", ".join(f"{p} = {i}" for p, i in ids.items()))
  return 0
