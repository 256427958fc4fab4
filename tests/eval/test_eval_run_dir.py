"""`yijax eval --run_dir` over a directory of checkpoints (resumable after a kill), `yijax eval mia`, and the
subcommands with their own flags (checkpoints scored on a mesh equal one device)."""

import json

import jax
import numpy as np

from yijax import cli, models
from yijax.data import pipeline
from yijax.eval import checkpoints, mia
from yijax.models.config import ModelConfig
from yijax.train import params_io

CONFIG = ModelConfig(vocab_size=4096, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1, mlp_dim=48,
                     rope_theta=1e4, max_seq_len=128)


def _released(root, names_seeds):
  for name, seed in names_seeds:
    params_io.save_model(str(root / name), models.init_params(CONFIG, jax.random.key(seed)), CONFIG)


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_run_dir_is_ordered_by_tokens_and_resumes_without_repeating_or_skipping(tmp_path, prepared_data):
  tokenizer = pipeline.read_manifest(prepared_data)["tokenizer"]["path"]
  # released checkpoints named by tokens seen: listed in token order, not name order
  _released(tmp_path / "released", [("tokens-20B", 2), ("tokens-3B", 1), ("tokens-100B", 3)])
  argv = ["yijax", "eval", f"--run_dir={tmp_path / 'released'}", "--tasks=arith,layer_cosine",
          f"--tokenizer={tokenizer}", "--batch_size=16"]
  assert cli.main(argv) == 0
  out = tmp_path / "released" / checkpoints.RESULTS
  full = _lines(out)
  order = [r["checkpoint"] for r in full]
  assert order == sorted(order, key=lambda n: {"tokens-3B": 0, "tokens-20B": 1, "tokens-100B": 2}[n])
  pairs = {(r["checkpoint"], r["task"]) for r in full}
  assert pairs == {(c, t) for c in ("tokens-3B", "tokens-20B", "tokens-100B") for t in ("arith", "layer_cosine")}
  assert {r["tokens_seen"] for r in full} == {3e9, 20e9, 100e9}
  # a kill in the middle of writing the second checkpoint's layer_cosine block: a torn last line
  text = out.read_text().splitlines(keepends=True)
  cut = next(i for i, r in enumerate(full) if r["checkpoint"] == "tokens-20B" and r["task"] == "layer_cosine")
  out.write_text("".join(text[:cut + 1]) + text[cut + 1][:10])
  assert cli.main(argv) == 0
  again = _lines(out)
  key = lambda r: (r["checkpoint"], r["task"], r["metric"])  # noqa: E731
  assert sorted(map(key, again)) == sorted(map(key, full))  # nothing repeated, nothing skipped
  assert {key(r): r["value"] for r in again} == {key(r): r["value"] for r in full}
  # usage errors name the flag instead of a traceback
  assert cli.main(["yijax", "eval", f"--run_dir={tmp_path / 'released'}"]) == 1  # no --tasks
  assert cli.main(argv + ["--steps=last"]) == 1


def test_eval_mia_cli_prints_and_writes_min_k_metrics(tmp_path, prepared_data):
  tokenizer = pipeline.read_manifest(prepared_data)["tokenizer"]["path"]
  params = models.init_params(CONFIG, jax.random.key(0))
  params_io.save_model(str(tmp_path / "model"), params, CONFIG)
  texts = [f"def function_{i}(x):\n    return x * {i} + {i * i}\n" * 3 for i in range(6)]
  for name, part in (("members", texts[:3]), ("others", texts[3:])):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
  out = tmp_path / "mia.json"
  argv = ["yijax", "eval", "mia", f"--ckpt={tmp_path / 'model'}", f"--tokenizer={tokenizer}",
          f"--members={tmp_path / 'members.jsonl'}", f"--nonmembers={tmp_path / 'others.jsonl'}", "--chunk_len=32",
          "--k=30,100", f"--out={out}"]
  assert cli.main(argv) == 0
  got = json.loads(out.read_text())
  assert set(got["auc"]) == {"30", "100"} and got["members"] == got["nonmembers"] > 0
  from yijax.data.tokenizer import Tokenizer

  tok = Tokenizer(tokenizer)
  direct = mia.membership_inference(CONFIG, params, mia.text_chunks(texts[:3], tok, 32),
                                    mia.text_chunks(texts[3:], tok, 32), 32, (30, 100))
  np.testing.assert_allclose(sorted(got["auc"].values()), sorted(direct["auc"].values()), rtol=1e-6)
  assert cli.main(argv[:3] + argv[4:]) == 1  # no --ckpt: a usage error, not a traceback


def test_eval_subcommands_have_their_own_flags_and_score_on_a_mesh(tmp_path, prepared_data, capsys):
  tokenizer = pipeline.read_manifest(prepared_data)["tokenizer"]["path"]
  _released(tmp_path / "run", [("tokens-1B", 4)])
  base = ["yijax", "eval", "checkpoints", f"--run_dir={tmp_path / 'run'}", "--tasks=arith,bpb_code",
          f"--tokenizer={tokenizer}", "--batch_size=16"]
  assert cli.main(base + [f"--output={tmp_path / 'one.jsonl'}"]) == 0
  assert cli.main(base + [f"--output={tmp_path / 'mesh.jsonl'}", "--mesh=fsdp:4,tensor:2"]) == 0
  one = {(r["task"], r["metric"]): r["value"] for r in _lines(tmp_path / "one.jsonl")}
  on_mesh = {(r["task"], r["metric"]): r["value"] for r in _lines(tmp_path / "mesh.jsonl")}
  assert one.keys() == on_mesh.keys() and one[("arith", "acc")] == on_mesh[("arith", "acc")]
  np.testing.assert_allclose([on_mesh[k] for k in one], list(one.values()), rtol=1e-5)
  capsys.readouterr()
  assert cli.main(["yijax", "eval", "needle", "--help"]) == 0
  needle_help = capsys.readouterr().out
  assert "--num_depths" in needle_help and "--multiple_choice" not in needle_help and "--members" not in needle_help
  assert cli.main(["yijax", "eval", "score", "--help"]) == 0
  score_help = capsys.readouterr().out
  assert "--mesh" in score_help and "--num_depths" not in score_help
  assert cli.main(["yijax", "eval", "bogus", f"--ckpt={tmp_path / 'run' / 'tokens-1B'}"]) == 1
  assert "unknown eval subcommand 'bogus'" in capsys.readouterr().err
