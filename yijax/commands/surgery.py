"""yijax surgery --ckpt=DIR --out=DIR (--layer_order=0,1,2,0,1,2 | --stack=4 | --interpolate=2 | --yi_upscale=12:28)

Grows a dense model in depth (yijax/surgery.py) and writes a model dir that
`yijax train --config.train.init_from=OUT` starts from with a fresh optimizer
and schedule; `--config.train.init_data_state_from=OUT` also continues the
source run's data stream (OUT/data/ is the source checkpoint's iterator state).
"""

from __future__ import annotations

import json

from absl import flags

from yijax.cli import UsageError
from yijax.commands import mesh_from_flag


def define_flags(fv, argv):
  flags.DEFINE_string("ckpt", None, "source: model dir, checkpoint step dir or run dir (its latest checkpoint)",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "output model dir (new or empty unless --overwrite)", flag_values=fv)
  flags.DEFINE_list("layer_order", None, "new layer i = source layer order[i], e.g. 0,1,2,0,1,2", flag_values=fv)
  flags.DEFINE_integer("stack", 0, "G_stack: the whole model this many times in depth", flag_values=fv)
  flags.DEFINE_integer("interpolate", 0, "each layer repeated this many times in place (0,0,1,1,...)",
                       flag_values=fv)
  flags.DEFINE_string("yi_upscale", None, "START:END: duplicate layers START..END-1, copies right after the "
                      "originals (Yi-9B from Yi-6B: 12:28)", flag_values=fv)
  flags.DEFINE_enum("new_layers", "copy", ["copy", "zero", "random"],
                    "fill of the new layers: copies, identity copies (output projections zeroed), fresh init",
                    flag_values=fv)
  flags.DEFINE_integer("seed", 0, "PRNG seed of --new_layers=random", flag_values=fv)
  flags.DEFINE_string("mesh", "fsdp:-1", "mesh the parameters are sharded over while copying, AXIS:SIZE,...",
                      flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "replace a non-empty --out", flag_values=fv)


def order_from_flags(fv, num_layers: int) -> list[int]:
  from yijax import surgery

  given = [name for name in ("layer_order", "stack", "interpolate", "yi_upscale") if fv[name].value]
  if len(given) != 1:
    raise UsageError(f"give exactly one of --layer_order, --stack, --interpolate, --yi_upscale (got {given or 'none'})")
  if fv.layer_order:
    try:
      return [int(i) for i in fv.layer_order]
    except ValueError:
      raise UsageError(f"--layer_order={','.join(fv.layer_order)}: give comma-separated layer indices") from None
  if fv.stack:
    return surgery.stack_order(num_layers, fv.stack)
  if fv.interpolate:
    return surgery.interpolation_order(num_layers, fv.interpolate)
  start, sep, end = fv.yi_upscale.partition(":")
  if not sep or not start.strip().isdigit() or not end.strip().isdigit():
    raise UsageError(f"--yi_upscale={fv.yi_upscale!r}: give START:END, e.g. 12:28 duplicates layers 12..27")
  return surgery.block_order(num_layers, int(start), int(end))


def run(fv, args):
  from yijax import sharding, surgery
  from yijax.train import params_io

  if not fv.ckpt or not fv.out:
    raise UsageError("--ckpt and --out are required, e.g. yijax surgery --ckpt=runs/small --out=runs/grown --stack=4")
  source_layers = params_io.read_model_config(fv.ckpt).num_layers
  order = order_from_flags(fv, source_layers)
  mesh = mesh_from_flag(fv.mesh) or sharding.make_mesh({"fsdp": -1})
  summary = surgery.grow_model_dir(fv.ckpt, fv.out, order, fv.new_layers, fv.seed, mesh, fv.overwrite)
  print(json.dumps(summary))
  print(f"wrote {fv.out}: {summary['source_layers']} -> {summary['layers']} layers, "
        f"{summary['source_params']:,} -> {summary['params']:,} parameters. Continue training with "
        f"--config.train.init_from={fv.out}" + (f" --config.train.init_data_state_from={fv.out}"
                                                if summary["data_state"] else ""))
  return 0
