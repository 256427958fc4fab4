"""yijax analyze layer-cosine --ckpt=DIR [--tokenizer=PATH] (--text=TEXT | --text_file=PATH) [--block_size=N]

Prints one JSON object: per layer, the mean cosine between each token's
hidden state before and after the layer (the first token excluded), the
model-level value (layers excluding the first and the last two), and with
--block_size the contiguous block Yi's rule would duplicate (the highest
mean cosine, first and last two layers excluded), as `yijax surgery
--yi_upscale=START:END` takes it.
"""

from __future__ import annotations

import json
import os

from absl import flags

from yijax.cli import UsageError

ANALYSES = ("layer-cosine",)


def define_flags(fv, argv):
  flags.DEFINE_string("ckpt", None, "model dir, checkpoint step dir or run dir", flag_values=fv)
  flags.DEFINE_string("tokenizer", None, "sentencepiece model (default: the checkpoint's)", flag_values=fv)
  flags.DEFINE_string("text", None, "text to run the model on", flag_values=fv)
  flags.DEFINE_string("text_file", None, "file holding the text (instead of --text)", flag_values=fv)
  flags.DEFINE_integer("max_tokens", 2048, "use at most this many tokens (and model.max_seq_len)", flag_values=fv)
  flags.DEFINE_integer("block_size", 0, "also report the block of this many layers Yi's rule picks", flag_values=fv)
  flags.DEFINE_string("output", None, "also write the JSON here", flag_values=fv)


def run(fv, args):
  from yijax import surgery
  from yijax.analysis import layer_cosine
  from yijax.data.tokenizer import Tokenizer
  from yijax.train import params_io

  if len(args) != 1 or args[0] not in ANALYSES:
    raise UsageError(f"say which analysis: yijax analyze {{{' | '.join(ANALYSES)}}} ... (got {args})")
  if not fv.ckpt:
    raise UsageError("--ckpt is required")
  if bool(fv.text) == bool(fv.text_file):
    raise UsageError("give the text as exactly one of --text=TEXT or --text_file=PATH")
  text = fv.text if fv.text else open(fv.text_file, encoding="utf-8").read()
  tokenizer_path = fv.tokenizer or params_io.locate_model(fv.ckpt).tokenizer
  if not tokenizer_path:
    raise UsageError(f"{fv.ckpt} has no tokenizer.model; pass --tokenizer=PATH")
  config, params = params_io.load_model(fv.ckpt)
  tokens = Tokenizer(tokenizer_path).encode(text, add_bos=True)[:min(fv.max_tokens, config.max_seq_len)]
  if len(tokens) < 2:
    raise UsageError("the text gives fewer than 2 tokens; the first is excluded, so give a longer --text")
  result = {"ckpt": os.path.abspath(fv.ckpt), **layer_cosine.layer_cosine(config, params, [tokens])}
  if fv.block_size:
    start, end = surgery.select_block(result["per_layer"], fv.block_size)
    result["block"] = {"start": start, "end": end, "yi_upscale": f"{start}:{end}",
                       "mean_cosine": sum(result["per_layer"][start:end]) / (end - start)}
  text_out = json.dumps(result)
  print(text_out)
  if fv.output:
    with open(fv.output, "w") as f:
      f.write(text_out + "\n")
  return 0
