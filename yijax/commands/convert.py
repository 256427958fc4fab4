"""yijax convert hf-to-yijax --hf_dir=DIR --out=DIR | yijax-to-hf --ckpt=DIR --out=DIR"""

from __future__ import annotations

from absl import flags

from yijax.cli import UsageError

DIRECTIONS = ("hf-to-yijax", "yijax-to-hf")


def define_flags(fv, argv):
  flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (config.json + safetensors)", flag_values=fv)
  flags.DEFINE_string("ckpt", None, "yijax model dir, checkpoint step dir or run dir", flag_values=fv)
  flags.DEFINE_string("out", None, "output directory (must be new or empty unless --overwrite)", flag_values=fv)
  flags.DEFINE_string("dtype", None, "cast parameters to float32 | bfloat16 | float16 (default: keep)", flag_values=fv)
  flags.DEFINE_integer("max_shard_gb", 5, "yijax-to-hf: largest safetensors shard, in GiB", flag_values=fv)
  flags.DEFINE_integer("bos_id", 1, "yijax-to-hf: bos_token_id written to config.json", flag_values=fv)
  flags.DEFINE_integer("eos_id", 2, "yijax-to-hf: eos_token_id written to config.json", flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "replace a non-empty --out", flag_values=fv)


def run(fv, args):
  from yijax.convert import hf

  if len(args) != 1 or args[0] not in DIRECTIONS:
    raise UsageError(f"say which direction: yijax convert {{{' | '.join(DIRECTIONS)}}} ... (got {args})")
  if not fv.out:
    raise UsageError("--out is required")
  if args[0] == "hf-to-yijax":
    if not fv.hf_dir:
      raise UsageError("hf-to-yijax needs --hf_dir")
    config = hf.hf_to_yijax(fv.hf_dir, fv.out, dtype=fv.dtype, overwrite=fv.overwrite)
    print(f"wrote {fv.out}: {config.num_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}")
  else:
    if not fv.ckpt:
      raise UsageError("yijax-to-hf needs --ckpt")
    hf.yijax_to_hf(fv.ckpt, fv.out, dtype=fv.dtype, max_shard_bytes=fv.max_shard_gb * 2**30,
                   overwrite=fv.overwrite, bos_id=fv.bos_id, eos_id=fv.eos_id)
    print(f"wrote {fv.out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
  return 0
