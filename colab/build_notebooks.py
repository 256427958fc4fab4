"""Builds colab/*.ipynb from the cells below, so notebooks are reviewed as Python, not JSON.

  python colab/build_notebooks.py            # rewrite the notebooks (no outputs stored)
  python colab/build_notebooks.py --check    # exit 1 if a committed notebook differs from its source here

Every notebook starts with an Open-in-Colab link and an install cell that does
nothing where yijax is already importable, and reads YIJAX_NOTEBOOK_SMALL=1
(set by tests/test_notebooks.py in CI) to run a few steps instead of the real
thing. A finished study adds its notebook to NOTEBOOKS with the same pattern.
"""

from __future__ import annotations

import argparse
import os
import sys

import nbformat

GITHUB_REPO = "yijax/yijax"  # owner/name on GitHub: the Colab link and the Colab install cell use it
HERE = os.path.dirname(os.path.abspath(__file__))


def colab_link(name: str) -> str:
  url = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/colab/{name}"
  return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


INSTALL = f'''\
# Install yijax where it is missing (Colab); in a local checkout or CI, where it is importable, nothing happens.
import importlib, importlib.util, os, subprocess, sys

if importlib.util.find_spec("yijax") is None:
  source = ["-e", "."] if os.path.exists("setup.py") else ["git+https://github.com/{GITHUB_REPO}"]
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", *source], check=True)
  importlib.invalidate_caches()'''

BACKEND = '''\
# The same code runs on CPU, GPU or TPU: JAX picks the runtime's accelerator.
import jax

print(f"jax {jax.__version__}; backend {jax.default_backend()}; {jax.device_count()} device(s): {jax.devices()}")'''

QUICKSTART = [
    ("markdown", f"""\
{colab_link("quickstart.ipynb")}

# yijax quickstart

Train the tiny Yi model (GQA, SwiGLU, RMSNorm, RoPE) on the embedded corpus
(Python's own documentation and sources; no download), plot its loss, sample
text, and export it to Hugging Face format. It runs top to bottom on a free
Colab CPU, GPU or TPU runtime in a few minutes; the same library drives
`yijax quickstart` and `yijax train --config=configs/pretrain/tiny.py`."""),
    ("code", INSTALL),
    ("code", BACKEND),
    ("markdown", """\
## Train

The run is a directory: rerunning the cell resumes from its newest checkpoint.
`YIJAX_NOTEBOOK_SMALL=1` (how CI executes this notebook) trains a 2-layer model
for a few steps instead."""),
    ("code", '''\
from yijax.train import loop
from yijax.train.config import tiny_pretrain_config

SMALL = os.environ.get("YIJAX_NOTEBOOK_SMALL") == "1"
WORKDIR = os.path.abspath("runs/colab-quickstart")

config = tiny_pretrain_config()  # tokenizer + data are prepared from the embedded corpus on first use
if SMALL:
  config.model.num_layers = 2
  config.train.steps = 4
  config.train.seq_len = 64
  config.train.progress_bar = False
  config.optimizer.warmup_steps = 1
  config.checkpoint.every_steps = 4
  config.eval.every_steps = 4
  config.eval.batches = 1
if os.environ.get("YIJAX_NOTEBOOK_DATA"):  # an already prepared data dir (CI reuses its own)
  config.data.prepared_dir = os.environ["YIJAX_NOTEBOOK_DATA"]

result = loop.train(config, WORKDIR)
print({k: round(float(v), 4) for k, v in result.items() if k in ("step", "loss") or k.startswith("eval/")})'''),
    ("markdown", "## The loss curve (from `WORKDIR/metrics.jsonl`)"),
    ("code", '''\
import json

import matplotlib.pyplot as plt

rows = [json.loads(line) for line in open(os.path.join(WORKDIR, "metrics.jsonl"))]
plt.figure(figsize=(6, 3.5))
plt.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train")
eval_path = os.path.join(WORKDIR, "eval.jsonl")
if os.path.exists(eval_path):
  evals = [json.loads(line) for line in open(eval_path)]
  plt.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="held-out")
plt.xlabel("step")
plt.ylabel("cross entropy (nats/token)")
plt.legend()
plt.show()'''),
    ("markdown", "## Sample text (KV-cache decoding with the run's tokenizer)"),
    ("code", '''\
from yijax.data.tokenizer import Tokenizer
from yijax.eval.generate import Generator, Sampling
from yijax.train import params_io

model_config, params = params_io.load_model(WORKDIR)  # the newest complete checkpoint
tokenizer = Tokenizer(params_io.locate_model(WORKDIR).tokenizer)
generator = Generator(model_config, params)
for prompt in ("def ", "import "):
  ids = generator.generate([tokenizer.encode(prompt, add_bos=True)], 8 if SMALL else 48, Sampling(0.8, 0, 0.95),
                           seed=0, stop_ids=[tokenizer.eos_id])[0]
  print(repr(prompt + tokenizer.decode([i for i in ids if i != tokenizer.eos_id])))'''),
    ("markdown", """\
## Export to Hugging Face format

`config.json` + safetensors (+ `tokenizer.model`): a `LlamaForCausalLM` that
`transformers` loads directly. Where `transformers` and `torch` are installed,
the last cell loads it and compares its logits with yijax's."""),
    ("code", '''\
from yijax.convert import hf

HF_DIR = os.path.abspath("runs/colab-quickstart-hf")
hf.yijax_to_hf(WORKDIR, HF_DIR, overwrite=True)
print(HF_DIR, sorted(os.listdir(HF_DIR)))'''),
    ("code", '''\
import numpy as np

from yijax import models

tokens = np.array([tokenizer.encode("import os", add_bos=True)])
ours = np.asarray(models.apply(model_config, params, tokens, np.arange(tokens.shape[1])[None]))
if importlib.util.find_spec("transformers") and importlib.util.find_spec("torch"):
  import torch
  from transformers import AutoModelForCausalLM

  hf_model = AutoModelForCausalLM.from_pretrained(HF_DIR).float().eval()
  with torch.no_grad():
    theirs = hf_model(torch.tensor(tokens)).logits.numpy()
  difference = float(np.max(np.abs(ours - theirs)))
  print(f"{type(hf_model).__name__}: largest logit difference from yijax {difference:.2e}")
  assert difference < 1e-3 * max(1.0, float(np.max(np.abs(ours)))), difference
else:
  print("transformers/torch not installed (pip install transformers torch): skipped loading the export")'''),
]

STUDY_INSTALL = f'''\
# Install yijax where it is missing (Colab): a clone of the repository, since the study configs live in its
# experiments/ folder; in a local checkout or CI, where yijax is importable, nothing happens.
import importlib, importlib.util, os, subprocess, sys

if importlib.util.find_spec("yijax") is None:
  if not os.path.exists("yijax-src"):
    subprocess.run(["git", "clone", "-q", "https://github.com/{GITHUB_REPO}", "yijax-src"], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "yijax-src"], check=True)
  sys.path.insert(0, os.path.abspath("yijax-src"))
  importlib.invalidate_caches()'''

SHOW_RESULTS = '''\
import glob
import json

from IPython.display import Image, Markdown, display

for workdir in WORKDIRS:
  display(Markdown(open(os.path.join(workdir, "report.md")).read()))
  for png in sorted(glob.glob(os.path.join(workdir, "*.png"))):
    print(os.path.relpath(png))
    display(Image(filename=png))'''


def study_notebook(name: str, title: str, intro: str, studies: list[str], data_dir_override: bool) -> list:
  """Cells that run `yijax experiment` at smoke scale for each study, then show report.md and every PNG."""
  readmes = ", ".join(f"`experiments/{s}/README.md`" for s in studies)
  run = f'''\
import yijax
from yijax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(yijax.__file__)))  # the checkout: experiments/ lives there
SCALE = "smoke"  # "cpu" reproduces the README's table (tens of minutes to an hour on 2 CPU cores)
WORKDIRS = []
for study in {studies!r}:
  workdir = os.path.abspath(f"runs/colab-{{study}}-{{SCALE}}")
  args = [f"--config={{ROOT}}/experiments/{{study}}/config.py:{{SCALE}}", f"--workdir={{workdir}}"]
'''
  if data_dir_override:
    run += '''\
  if os.environ.get("YIJAX_NOTEBOOK_DATA"):  # an already prepared embedded corpus (CI reuses its own)
    args.append(f"--config.study.data_dir={os.environ['YIJAX_NOTEBOOK_DATA']}")
'''
  run += '''\
  assert cli.main(["yijax", "experiment", "--dry_run", *args]) == 0  # the plan: one JSON line per stage
  assert cli.main(["yijax", "experiment", *args]) == 0  # rerunning skips finished stages
  WORKDIRS.append(workdir)'''
  return [
      ("markdown", f"""\
{colab_link(name)}

# {title}

{intro}

This notebook runs the **smoke** scale (a micro model, a few steps: minutes on a
free Colab CPU) to show the whole pipeline and its plots; the measured cpu-scale
results and the protocol are in {readmes}."""),
      ("code", STUDY_INSTALL),
      ("code", BACKEND),
      ("markdown", "## Run the study\n\nEvery stage is a normal yijax run with its own directory; a study "
                   "killed at any point resumes where it stopped when the cell is rerun."),
      ("code", run),
      ("markdown", "## Results: `report.md` and the plots"),
      ("code", SHOW_RESULTS),
  ]


CHECKPOINT_DYNAMICS = study_notebook(
    "checkpoint_dynamics.ipynb", "Checkpoint dynamics (\"The Fine Line\", Yang et al. 2024)",
    "Three model sizes trained on the same data order; the offline battery (bits per byte, cloze, "
    "arithmetic, induction, facts) on every kept checkpoint; curves against tokens and FLOPs, distances "
    "between normalised task curves within and across domains and across sizes, tokens to leave chance and to "
    "reach half of the final gain, which domain moves first, and where downstream metrics decouple from the loss "
    "beyond noise.", ["checkpoint_dynamics"], data_dir_override=True)

STABILITY_GAP = study_notebook(
    "stability_gap.ipynb", "The stability gap of continual pretraining (Guo et al. 2024)",
    "A small model pretrained on the embedded corpus and a synthetic \"world A\" is continually pretrained on "
    "a \"world B\" domain: domain and general accuracy first dip, then recover. The arms compare the "
    "full-domain baseline with the paper's three strategies (a subset for several epochs, its highest-quality "
    "part, a pretraining-like mixture) and controls (replay, rewarm, freezing).", ["stability_gap"],
    data_dir_override=False)

UNLEARNING = study_notebook(
    "unlearning.ipynb", "Machine unlearning of a pretrained model (Yao et al., ACL 2024)",
    "Two settings: a tiny Yi-architecture model pretrained on code and prose unlearns a few code modules, and a "
    "model that learned facts about synthetic people unlearns a few dozen of them, with the gradient-ascent "
    "family of methods. Success is being indistinguishable from gold models trained without the forget data "
    "(their seed band) on forget, retain, general and membership-inference metrics; each method's path over "
    "epochs is plotted against the gold band.",
    ["unlearning"], data_dir_override=False)

GROWTH = study_notebook(
    "growth.ipynb", "Growing models in depth: Yi-9B depth up-scaling and G_stack",
    "`depth_upscaling`: pretrain an 8-layer source to a held-out plateau, grow it to 12 layers by Yi's "
    "layer-cosine rule and by SOLAR's order, continue with batch growth on plateau for a fixed number of tokens, "
    "and compare with the source continued and with 12 layers trained from scratch. `growth`: G_stack (Du et al. "
    "2024), a small model stacked 4x in depth after 5% or 10% of the tokens (and G_random), its speedup to "
    "scratch's final loss. Both over paired seeds, every comparison a computed claim.",
    ["depth_upscaling", "growth"], data_dir_override=True)

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "checkpoint_dynamics.ipynb": CHECKPOINT_DYNAMICS,
             "stability_gap.ipynb": STABILITY_GAP, "unlearning.ipynb": UNLEARNING, "growth.ipynb": GROWTH}


def build(cells) -> nbformat.NotebookNode:
  notebook = nbformat.v4.new_notebook()
  notebook.metadata = {
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"},
      "colab": {"provenance": []},
  }
  make = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
  notebook.cells = [make[kind](source) for kind, source in cells]
  for i, cell in enumerate(notebook.cells):
    cell["id"] = f"cell-{i}"  # stable ids: rebuilding an unchanged notebook changes nothing
  nbformat.validate(notebook)
  return notebook


def render(cells) -> str:
  return nbformat.writes(build(cells)) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true", help="compare, do not write")
  args = parser.parse_args(argv)
  stale = []
  for name, cells in NOTEBOOKS.items():
    path = os.path.join(HERE, name)
    text = render(cells)
    current = open(path).read() if os.path.exists(path) else None
    if args.check:
      if current != text:
        stale.append(name)
    elif current != text:
      with open(path, "w") as f:
        f.write(text)
      print(f"wrote {path}")
  if stale:
    print(f"out of date: {', '.join(stale)}; run python colab/build_notebooks.py", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
