"""yijax generate --ckpt=DIR (--prompt=TEXT --tokenizer=PATH | --prompt_ids=1,2,3) --max_new_tokens=N

--chat: each --prompt is a user message, rendered with the chat template (the model's, else Yi's ChatML;
--system adds a system prompt) and answered up to <|im_end|>.
"""

from __future__ import annotations

from absl import flags

import json
import sys

from yijax.cli import UsageError


def define_flags(fv, argv):
  flags.DEFINE_string("ckpt", None, "model dir (yijax convert output), checkpoint step dir or run dir", flag_values=fv)
  flags.DEFINE_multi_string("prompt", [], "prompt text (repeat for a batch); needs a tokenizer", flag_values=fv)
  flags.DEFINE_multi_string("prompt_ids", [], "comma-separated token ids (repeat for a batch)", flag_values=fv)
  flags.DEFINE_string("tokenizer", None, "sentencepiece .model or dir (default: the one in --ckpt, if any)", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 32, "tokens to generate per prompt", flag_values=fv)
  flags.DEFINE_float("temperature", 0.0, "0 = greedy", flag_values=fv)
  flags.DEFINE_integer("top_k", 0, "sample from the k most likely tokens (0 = all)", flag_values=fv)
  flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1 = off)", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "PRNG seed for sampling", flag_values=fv)
  flags.DEFINE_list("stop_ids", None, "stop token ids (default: the tokenizer's eos)", flag_values=fv)
  flags.DEFINE_boolean("add_bos", True, "prepend the tokenizer's bos to text prompts", flag_values=fv)
  flags.DEFINE_string("output", None, "write one JSON object per prompt to this .jsonl file (- : to stdout, "
                      "with nothing else there)", flag_values=fv)
  flags.DEFINE_string("dtype", None, "compute dtype (default: the model's)", flag_values=fv)
  flags.DEFINE_boolean("chat", False, "each --prompt is a user message to a chat model: rendered with the chat "
                       "template, answered up to <|im_end|>", flag_values=fv)
  flags.DEFINE_string("system", "", "with --chat: a system prompt before each message", flag_values=fv)
  flags.DEFINE_string("template", None, "with --chat: a chat template name (yi) or Jinja string (default: the one "
                      "the model was fine-tuned with, else Yi's)", flag_values=fv)


def _parse_ids(text: str) -> list[int]:
  try:
    return [int(t) for t in text.replace(" ", "").split(",") if t]
  except ValueError:
    raise UsageError(f"--prompt_ids={text!r} must be comma-separated integers") from None


def run(fv, args):
  from yijax.data.tokenizer import Tokenizer, resolve_model_path
  from yijax.eval.generate import Generator, Sampling, check_length
  from yijax.train import params_io

  if not fv.ckpt:
    raise UsageError("--ckpt is required")
  if bool(fv.prompt) == bool(fv.prompt_ids):
    raise UsageError("give either --prompt (with a tokenizer) or --prompt_ids")
  location = params_io.locate_model(fv.ckpt)
  tokenizer = None
  tok_path = fv.tokenizer or location.tokenizer
  if tok_path:
    tokenizer = Tokenizer(resolve_model_path(tok_path))
  if fv.prompt and tokenizer is None:
    raise UsageError("--prompt needs --tokenizer (no tokenizer.model in --ckpt)")
  sampling = Sampling(fv.temperature, fv.top_k, fv.top_p).validate()
  config = params_io.read_model_config(fv.ckpt)  # every check before the weights are read
  if tokenizer is not None:
    tokenizer.check_fits(config.vocab_size)
  chat_stops = None
  if fv.chat:
    from yijax.eval import chat

    if not fv.prompt:
      raise UsageError("--chat takes --prompt messages (text), not --prompt_ids")
    fmt = chat.chat_format_for(fv.ckpt, fv.template)
    chat_stops = chat.stop_ids(tokenizer, fmt)
    prompts = chat.chat_prompts(tokenizer, fmt, fv.prompt, fv.system)
  else:
    prompts = ([tokenizer.encode(p, add_bos=fv.add_bos) for p in fv.prompt] if fv.prompt
               else [_parse_ids(p) for p in fv.prompt_ids])
  bad = [t for p in prompts for t in p if not 0 <= t < config.vocab_size]
  if bad:
    raise UsageError(f"prompt token id {bad[0]} is outside the model's vocabulary [0, {config.vocab_size})")
  check_length(max(len(p) for p in prompts), fv.max_new_tokens, config.max_seq_len)
  stop_ids = [int(s) for s in fv.stop_ids] if fv.stop_ids is not None else chat_stops if chat_stops else (
      [tokenizer.eos_id] if tokenizer is not None and tokenizer.eos_id >= 0 else [])
  config, params = params_io.load_model(fv.ckpt)
  if fv.dtype:
    config = config.replace(dtype=fv.dtype)
  outputs = Generator(config, params).generate(prompts, fv.max_new_tokens, sampling, fv.seed, stop_ids)
  records = []
  for prompt, ids in zip(prompts, outputs):
    record = {"prompt_ids": prompt, "token_ids": ids}
    if fv.chat:
      record["message"] = fv.prompt[len(records)]
      record["stopped"] = bool(ids) and ids[-1] in stop_ids
    if tokenizer is not None:
      record["prompt"] = tokenizer.decode(prompt)
      record["text"] = tokenizer.decode([i for i in ids if i not in stop_ids])
    records.append(record)
  if fv.output == "-":  # JSONL on stdout, for pipes: no other line there
    for record in records:
      sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0
  if fv.output:
    from yijax import paths

    paths.write_text(fv.output, "".join(json.dumps(record) + "\n" for record in records))
  for record in records:
    line = record.get("text", " ".join(map(str, record["token_ids"])))
    print(f"{record.get('message', record.get('prompt', record['prompt_ids']))!r} -> {line!r}", file=sys.stdout)
  return 0
