"""yijax chat --ckpt=DIR [--system=TEXT]: an interactive terminal chat with a fine-tuned chat model.

Reads one user message per line from stdin (a terminal or a pipe), streams each answer as it is decoded and
stops it at <|im_end|>; the conversation so far is the context of every answer. /reset starts over, /exit (or
end of input) ends. --save=FILE appends the conversation as one {"messages": [...]} JSONL line.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from yijax.cli import UsageError


def define_flags(fv, argv):
  flags.DEFINE_string("ckpt", None, "model dir, checkpoint step dir or run dir of a chat model", flag_values=fv)
  flags.DEFINE_string("system", "", "system prompt (the first message of the conversation)", flag_values=fv)
  flags.DEFINE_string("tokenizer", None, "sentencepiece .model or dir (default: the one in --ckpt)", flag_values=fv)
  flags.DEFINE_string("template", None, "chat template: a name (yi) or a Jinja string (default: the one the model "
                      "was fine-tuned with, else Yi's ChatML)", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 256, "most tokens per answer", flag_values=fv)
  flags.DEFINE_float("temperature", 0.0, "0 = greedy", flag_values=fv)
  flags.DEFINE_integer("top_k", 0, "sample from the k most likely tokens (0 = all)", flag_values=fv)
  flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1 = off)", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "PRNG seed for sampling", flag_values=fv)
  flags.DEFINE_string("save", None, "append the conversation to this JSONL file at the end", flag_values=fv)
  flags.DEFINE_string("dtype", None, "compute dtype (default: the model's)", flag_values=fv)


def load_session(fv):
  """(ChatSession, tokenizer) for the flags (the checks before the weights are read)."""
  from yijax.data.tokenizer import Tokenizer, resolve_model_path
  from yijax.eval import chat
  from yijax.eval.generate import Sampling
  from yijax.train import params_io

  if not fv.ckpt:
    raise UsageError("--ckpt is required")
  location = params_io.locate_model(fv.ckpt)
  tok_path = fv.tokenizer or location.tokenizer
  if not tok_path:
    raise UsageError(f"no tokenizer.model in --ckpt={fv.ckpt}; give --tokenizer")
  tokenizer = Tokenizer(resolve_model_path(tok_path))
  fmt = chat.chat_format_for(fv.ckpt, fv.template)
  chat.stop_ids(tokenizer, fmt)  # the chat tokens exist, before the weights are read
  sampling = Sampling(fv.temperature, fv.top_k, fv.top_p).validate()
  config = params_io.read_model_config(fv.ckpt)
  tokenizer.check_fits(config.vocab_size)
  config, params = params_io.load_model(fv.ckpt)
  if fv.dtype:
    config = config.replace(dtype=fv.dtype)
  return chat.ChatSession(config, params, tokenizer, fmt, fv.system, fv.max_new_tokens, sampling, fv.seed)


def run(fv, args):
  session = load_session(fv)
  interactive = sys.stdin.isatty()
  if interactive:
    print("chat: one message per line; /reset starts over, /exit or Ctrl-D ends", flush=True)
  out = sys.stdout
  while True:
    if interactive:
      out.write("\nyou> ")
      out.flush()
    line = sys.stdin.readline()
    if not line:
      break
    text = line.rstrip("\n")
    if text.strip() == "/exit":
      break
    if text.strip() == "/reset":
      session.reset()
      out.write("(history cleared)\n")
      continue
    if not text.strip():
      continue
    out.write("assistant> ")
    session.reply(text, on_text=lambda piece: (out.write(piece), out.flush()))
    out.write("\n")
    out.flush()
  if fv.save:
    with open(fv.save, "a") as f:
      f.write(json.dumps({"messages": session.messages}, ensure_ascii=False) + "\n")
  return 0
