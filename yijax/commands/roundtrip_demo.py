"""yijax roundtrip-demo --workdir=DIR: tiny model -> HF export -> import -> generate."""

from __future__ import annotations

from absl import flags

import os

import jax
import numpy as np


def define_flags(fv, argv):
  flags.DEFINE_string("workdir", "/tmp/yijax_roundtrip", "where the three model directories go", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "initialization seed", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 16, "tokens to generate", flag_values=fv)


def run(fv, args):
  from yijax import models
  from yijax.convert import hf
  from yijax.eval.generate import Generator
  from yijax.models import presets
  from yijax.train import params_io

  config = presets.get("tiny")
  params = models.init_params(config, jax.random.key(fv.seed))
  native, exported, imported = (os.path.join(fv.workdir, d) for d in ("yijax", "hf", "reimported"))
  for d in (native, exported, imported):
    if os.path.exists(d):
      import shutil

      shutil.rmtree(d)
  params_io.save_model(native, params, config)
  hf.yijax_to_hf(native, exported)
  hf.hf_to_yijax(exported, imported)
  _, back = params_io.load_model(imported)
  same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)))
  print(f"tiny model: {models.param_count(config)['total']:,} parameters -> {exported} -> {imported}; "
        f"parameters identical after the round trip: {same}")
  prompt = [1, 17, 42, 99]
  out = Generator(config, back).generate([prompt], fv.max_new_tokens)[0]
  print(f"greedy continuation of {prompt}: {out}")
  return 0 if same else 1
