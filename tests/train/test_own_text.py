"""`yijax quickstart --text=FILE --budget_s=S`: your own text, a measured step time, steps fitted to the
budget, held-out bits per byte on the slice it holds out, and a run dir that is an ordinary model dir."""

import json
import math

import numpy as np

from yijax import cli
from yijax.data import corpus
from yijax.train import own_text, params_io


def _text(path, size=120_000):
  docs = [text for _, text in corpus.documents("python_docs", "train")]
  text = "\n".join(docs)[:size]
  path.write_text(text)
  return text


def test_split_holds_out_the_last_tenth_at_a_line_end(tmp_path):
  text = _text(tmp_path / "a.txt", 20_000)
  counts = own_text.split_text([str(tmp_path / "a.txt")], str(tmp_path / "out"))
  train = (tmp_path / "out" / "train" / "000.txt").read_text()
  heldout = (tmp_path / "out" / "heldout" / "000.txt").read_text()
  assert train + heldout == text and train.endswith("\n")
  assert 0.085 < counts["heldout_bytes"] / len(text.encode()) <= 0.1


def test_quickstart_on_own_text_within_a_budget(tmp_path, capsys):
  text_file = tmp_path / "mine.txt"
  _text(text_file)
  workdir = tmp_path / "run"
  budget = 40.0
  assert cli.main(["yijax", "quickstart", f"--text={text_file}", f"--workdir={workdir}", f"--budget_s={budget}",
                   "--max_new_tokens=8"]) == 0
  out = capsys.readouterr().out
  plan = json.load(open(workdir / own_text.PLAN))
  # the steps are what the budget holds at the measured step time (at least MIN_STEPS)
  assert plan["steps"] >= own_text.MIN_STEPS and plan["step_time_s"] > 0
  assert plan["steps"] * plan["step_time_s"] <= budget or plan["steps"] == own_text.MIN_STEPS
  assert plan["steps"] % plan["recipe"]["steps_per_call"] == 0  # whole compiled calls of k steps
  # everything (split, tokenizer, preparation, measuring, compiles, training, held-out score, checkpoint)
  # within the budget, give or take the noise of a shared CI machine
  assert plan["seconds"] <= 1.5 * budget and plan["prepare_s"] + plan["measure_s"] < plan["seconds"]
  assert f"trained and scored in {plan['seconds']:.0f} s of a {budget:.0f} s budget" in out
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records] == list(range(1, plan["steps"] + 1))
  # the warmup and cosine are fitted to those steps: the LR peaks, then decays over them (to a tenth at the end)
  lrs = [r["lr"] for r in records]
  assert max(lrs) > 0.95 * plan["recipe"]["lr"] and lrs[-1] < 0.5 * plan["recipe"]["lr"]
  final = json.loads(open(workdir / "eval.jsonl").read().splitlines()[-1])
  assert math.isfinite(final["bits_per_byte"]) and 0 < final["bits_per_byte"] < 8
  assert f"bits/byte {final['bits_per_byte']:.4f}" in out
  # the whole held-out slice is scored (every token but the first of each row, which has no context)
  rows = math.ceil(plan["heldout_tokens"] / plan["recipe"]["seq_len"])
  assert plan["heldout_tokens"] - 2 * rows <= final["tokens"] <= plan["heldout_tokens"] + 2
  # an ordinary model dir: its tokenizer prepares other text, and `yijax eval` scores it there
  config, params = params_io.load_model(str(workdir))
  assert config.vocab_size == plan["recipe"]["vocab_size"] and (workdir / "tokenizer.model").exists()
  other = tmp_path / "other.txt"
  other.write_text("\n".join(text for _, text in corpus.documents("python_docs", "validation"))[:20_000])
  assert cli.main(["yijax", "prepare", f"--source=other={other}", "--split=validation", f"--tokenizer={workdir}",
                   f"--out={tmp_path / 'other_data'}", "--num_workers=1"]) == 0
  assert cli.main(["yijax", "eval", f"--ckpt={workdir}", f"--data={tmp_path / 'other_data'}"]) == 0
  assert "bits_per_byte" in capsys.readouterr().out
  # rerun: the same run resumes (already finished), with the same plan
  assert cli.main(["yijax", "quickstart", f"--text={text_file}", f"--workdir={workdir}", f"--budget_s={budget}",
                   "--max_new_tokens=4"]) == 0
  assert json.load(open(workdir / own_text.PLAN)) == plan
  assert np.isfinite(records[-1]["loss"])


def test_pieces_cut_at_line_ends_and_lose_nothing():
  text = "".join(f"line {i} " + "x" * (i % 37) + "\n" for i in range(2000))
  parts = own_text.pieces(text, 1000)
  assert "".join(parts) == text and all(p.endswith("\n") for p in parts)
  assert all(500 <= len(p) <= 1000 for p in parts[:-1])
  assert own_text.pieces("a" * 2500, 1000) == ["a" * 1000, "a" * 1000, "a" * 500]  # no line end: cut anyway
