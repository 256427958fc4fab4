"""Needle in a haystack: prompt layout, scoring, the grid (batched, resumable, plotted), the
`yijax eval needle` command, and a tiny model trained on pass-key retrieval beating an untrained one."""

import json
import os

import jax
import numpy as np
import pytest

from yijax import cli, configlib, models
from yijax.data import prepare
from yijax.data.tokenizer import train_tokenizer
from yijax.eval import needle
from yijax.eval.generate import Generator, bucket_length
from yijax.models.config import ModelConfig
from yijax.train import loop, params_io
from yijax.train.config import base_config

NOUNS = "grass sky sun river tree road house cat dog bird stone cloud moon field door lamp book chair wind rain".split()
COLORS = "green blue yellow long tall wide old small quiet bright dark warm cold soft red heavy calm loud empty full"
ADJECTIVES = COLORS.split()
# The training pass keys. Random keys would need an induction head, which a 2-layer model on 2 CPU cores
# does not form in a test's budget (measured: no retrieval after 500-1200 steps for 4 of 5 seeds); with
# keys from a set the question is the same for all of them, so answering right means reading the needle.
KEYS = ("71432", "28195", "50376", "64819", "93057", "15284", "37960", "82641")
LENGTHS, DEPTHS, NEW_TOKENS = [48, 60, 72], [0.0, 50.0, 100.0], 8
TRAIN_SEED, TRAIN_STEPS = 1, 200


def filler(rng, sentences):
  """Random filler sentences ("The sky is blue."): each noun has its adjective, the order is random."""
  return " ".join(f"The {NOUNS[i]} is {ADJECTIVES[i]}." for i in rng.integers(len(NOUNS), size=sentences))


def passkey_task(key):
  return needle.NeedleTask(needle=f"The pass key is {key}. Remember it.", question=needle.PASSKEY.question,
                           answer=key, template=needle.PASSKEY.template)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  """A 512-piece tokenizer trained on filler, pass-key sentences and questions."""
  root = tmp_path_factory.mktemp("needle_tok")
  rng = np.random.default_rng(0)
  lines = []
  for _ in range(2000):
    key = "".join(map(str, rng.integers(0, 10, 5)))
    lines.append(f"{filler(rng, 5)}\n{passkey_task(key).parts()[1]}{filler(rng, 3)}\n"
                 f"{needle.PASSKEY.question} {key}")
  (root / "sample.txt").write_text("\n".join(lines))
  return train_tokenizer([str(root / "sample.txt")], 512, str(root / "tok"))


@pytest.fixture(scope="module")
def haystack_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("needle_hay") / "filler.txt"
  path.write_text(filler(np.random.default_rng(123), 300))
  return str(path)


def test_score_counts_answer_words_case_and_punctuation_free():
  answer = needle.DEFAULT_ANSWER
  assert needle.score_output("Eat a sandwich, and sit in Dolores Park on a sunny day!", answer) == 1.0
  assert needle.score_output("eat a sandwich", answer) == pytest.approx(4 / 12)  # "a" counts twice
  assert needle.score_output("nothing relevant", answer) == 0.0
  assert needle.score_output(" 71432.\n", "71432") == 1.0 and needle.score_output(" 714320", "71432") == 0.0


def test_fu_et_al_scoring_as_their_scripts_compute_it():
  """visualize.py: set overlap of whitespace words (punctuation kept) with their 12-word answer, so at most 11/12;
  their records' score: ROUGE-1 F x 10 against the needle, stemmed."""
  task = needle.NeedleTask()
  expected = needle.fu_expected_answer(task)
  assert expected == "eat a sandwich and sit in Dolores Park on a sunny day." and len(expected.split()) == 12
  perfect = "Eat a sandwich and sit in Dolores Park on a sunny day."
  assert needle.fu_score(perfect, expected) == pytest.approx(11 / 12)  # "a" twice in 12 words, once in a set
  assert needle.fu_score("eat a sandwich and sit in Dolores Park on a sunny day", expected) == pytest.approx(10 / 12)
  assert needle.fu_score("sandwich, day", expected) == 0.0  # "sandwich," is not "sandwich", "day" not "day."
  assert needle.score_output(perfect, needle.DEFAULT_ANSWER) == 1.0  # the default score's maximum is 1
  assert needle.fu_expected_answer(passkey_task("71432")) == "71432"  # the needle does not end with it
  pytest.importorskip("rouge_score")
  assert needle.rouge1(task.needle, task.needle) == pytest.approx(10.0)
  # the needle is 21 tokens ("dolores" -> "dolor", "sunny" -> "sunni"); a 4-token output of them: P = 1, R = 4/21
  assert needle.rouge1("the best thing to", task.needle) == pytest.approx(10 * 2 * (4 / 21) / (1 + 4 / 21))
  assert needle.rouge1("Dolores sunny", task.needle) == pytest.approx(10 * 2 * (2 / 21) / (1 + 2 / 21))  # stemmed
  record = {"output": perfect, "score": 1.0}  # an older record without the fields is scored from its output
  assert needle.record_score(record, "fu2024", task) == pytest.approx(11 / 12)
  assert needle.record_score(record, "rouge1", task) == pytest.approx(needle.rouge1(perfect, task.needle))


def test_fu_layout_trims_the_haystack_to_the_length_less_the_buffer_and_the_needle(tokenizer):
  task = needle.NeedleTask()
  builder = needle.PromptBuilder(tokenizer, task)
  assert needle.haystack_count(4096, builder, 50, "fu2024") == 4096 - 200 - len(builder.needle)
  assert needle.haystack_count(4096, builder, 50, "yijax") + builder.fixed_tokens == 4096 - 50


def test_lengths_and_depths_follow_the_protocol():
  assert needle.context_lengths(1000, 4096, 40)[:3] == [1000, 1079, 1159] and len(needle.context_lengths(
      1000, 4096, 40)) == 40
  assert needle.context_lengths(1000, 1010, 40) == list(range(1000, 1011))  # duplicates dropped
  assert needle.needle_depths(10) == [0, 11, 22, 33, 44, 56, 67, 78, 89, 100]
  with pytest.raises(ValueError, match="--min_length=2000 .* --max_length=1024"):
    needle.context_lengths(2000, 1024, 40)
  # no --min_length: 1000 tokens, or max_length / num_lengths below that, so a short --max_length still works
  assert needle.default_min_length(131_072, 40) == 1000
  assert needle.default_min_length(512, 8) == 64
  assert needle.context_lengths(needle.default_min_length(512, 8), 512, 8) == [64, 128, 192, 256, 320, 384, 448, 512]


def test_prompt_layout_places_the_needle_on_a_boundary(tokenizer, haystack_file):
  task = passkey_task("71432")
  builder = needle.PromptBuilder(tokenizer, task, add_bos=True)
  haystack = needle.Haystack(tokenizer, open(haystack_file).read())
  for depth in (0.0, 33.0, 50.0, 100.0):
    prompt = builder.build(haystack, 64, depth)
    assert len(prompt.ids) == 64 and prompt.ids[0] == tokenizer.bos_id
    start, size = prompt.needle_position, len(builder.needle)
    assert prompt.ids[start:start + size] == builder.needle
    assert prompt.ids[-len(builder.suffix):] == builder.suffix
    point = start - 1  # haystack tokens before the needle (after BOS)
    if depth == 100:
      assert point == prompt.haystack_tokens  # at the very end, as in the original
    else:
      assert point <= prompt.haystack_tokens * depth / 100
      assert point == 0 or tokenizer.decode(prompt.ids[1:start]).endswith(".")  # after a whole sentence
  long_prompt = builder.build(haystack, 2000, 50.0)  # longer than the text: repeated
  assert len(long_prompt.ids) == 2000
  with pytest.raises(ValueError, match="raise --min_length"):
    builder.build(haystack, builder.fixed_tokens, 50.0)
  with pytest.raises(ValueError, match="--template"):
    needle.NeedleTask(template="no context here").validate()


def test_grid_batches_by_bucket_resumes_and_plots(tmp_path, tokenizer, haystack_file):
  """3 lengths x 3 depths on a random tiny model: every cell, scores in [0, 1], one compilation per
  prompt bucket, a rerun skips finished cells and a partial rerun redoes only the missing ones."""
  config = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       mlp_dim=96, rope_theta=10000.0, max_seq_len=256)
  params = models.init_params(config, jax.random.key(0))
  lengths, depths = needle.context_lengths(80, 240, 3), needle.needle_depths(3)
  results = str(tmp_path / "needle.jsonl")
  text = open(haystack_file).read()
  generator = Generator(config, params)
  run = lambda gen=None: needle.run_needle(config, params, tokenizer, lengths, depths, task=passkey_task("71432"),
                                           haystack=text, max_new_tokens=NEW_TOKENS, batch_size=4,
                                           results_path=results, generator=gen)
  records = run(generator)
  assert [(r["length"], r["depth"]) for r in records] == [(n, d) for n in lengths for d in depths]
  assert all(0.0 <= r["score"] <= 1.0 and r["prompt_tokens"] == r["length"] - NEW_TOKENS for r in records)
  buckets = {bucket_length(n - NEW_TOKENS) for n in lengths}
  assert len(buckets) == 2 and generator.trace_counts == {"prefill": 2, "decode": 2}

  assert run() == records  # all cells done: nothing generated, no Generator made
  lines = open(results).read().splitlines()
  with open(results, "w") as f:  # drop 3 cells and tear the last line, as a killed run would
    f.write("\n".join(lines[:6]) + "\n" + lines[6][:20])
  assert run(generator) == records  # the same compiled functions, the same greedy outputs
  assert generator.trace_counts == {"prefill": 2, "decode": 2}
  assert len(needle.read_results(results)) == 9

  needle.plot_heatmap(records, str(tmp_path / "needle.png"), train_length=200)
  assert (tmp_path / "needle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert all(r["fu_score"] == needle.fu_score(r["output"], "71432") for r in records)
  fu = needle.run_needle(config, params, tokenizer, [240, 300], [0.0], task=passkey_task("71432"), haystack=text,
                         max_new_tokens=NEW_TOKENS, batch_size=2, generator=generator, layout="fu2024",
                         results_path=str(tmp_path / "fu.jsonl"))
  builder = needle.PromptBuilder(tokenizer, passkey_task("71432"))
  assert [r["haystack_tokens"] for r in fu] == [n - 200 - len(builder.needle) for n in (240, 300)]
  with pytest.raises(ValueError, match="other settings"):  # a layout's results never mix with another's
    needle.run_needle(config, params, tokenizer, [240], [0.0], task=passkey_task("71432"), haystack=text,
                      max_new_tokens=NEW_TOKENS, results_path=str(tmp_path / "fu.jsonl"))
  with pytest.raises(ValueError, match="other settings.*new --out"):
    needle.run_needle(config, params, tokenizer, lengths, depths, task=passkey_task("28195"), haystack=text,
                      max_new_tokens=NEW_TOKENS, results_path=results)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tokenizer):
  """`loop.train` on pass-key documents: random filler with "The pass key is K. Remember it." at a random
  depth, the question, and K (one of KEYS); TRAIN_STEPS steps of 16 x 128 tokens."""
  root = tmp_path_factory.mktemp("needle_train")
  rng = np.random.default_rng(TRAIN_SEED)
  docs = []
  for _ in range(2500):
    key = KEYS[rng.integers(len(KEYS))]
    builder = needle.PromptBuilder(tokenizer, passkey_task(key))
    haystack = needle.Haystack(tokenizer, filler(rng, int(rng.integers(1, 7))))
    answer = tokenizer.encode(" " + key)
    prompt_tokens = int(rng.integers(builder.fixed_tokens + 4, 78 - len(answer) + 1))
    docs.append(builder.build(haystack, prompt_tokens, float(rng.uniform(0, 100))).ids + answer)
  prepare.write_token_source(str(root / "data"), "train", "passkey", docs, dict(tokenizer.meta(), path=tokenizer.path))
  config = configlib.apply_overrides(base_config("tiny"), {
      "model.vocab_size": tokenizer.vocab_size, "model.num_layers": 2, "model.hidden_size": 64,
      "model.num_heads": 4, "model.num_kv_heads": 4, "model.head_dim": 16, "model.mlp_dim": 128,
      "model.max_seq_len": 128, "train.steps": TRAIN_STEPS, "train.seed": TRAIN_SEED,
      "train.batch_size": 16, "train.seq_len": 128, "train.progress_bar": False, "train.log_every": 40,
      "optimizer.lr": 5e-3, "optimizer.warmup_steps": 20, "optimizer.weight_decay": 0.0,
      "checkpoint.every_steps": TRAIN_STEPS, "checkpoint.async_save": False, "eval.batches": 0,
      "data.prepared_dir": str(root / "data"), "data.sources": {"passkey": 1.0}})
  loop.train(config, str(root / "run"))
  return str(root / "run"), configlib.model_config(config)


@pytest.mark.slow
def test_trained_model_retrieves_the_pass_key_and_an_untrained_one_does_not(trained_run, tokenizer,
                                                                            haystack_file):
  """Two different keys in the same unseen haystack: a model that ignores the needle gets at most one
  of them right (mean <= 0.5); the trained model must read it."""
  run_dir, config = trained_run
  _, trained = params_io.load_model(run_dir)
  untrained = models.init_params(config, jax.random.key(1))
  generator = Generator(config, trained)
  text = open(haystack_file).read()
  scores = {}
  for name, params in (("trained", trained), ("untrained", untrained)):
    records = [r for key in ("71432", "28195") for r in needle.run_needle(
        config, params, tokenizer, LENGTHS, DEPTHS, task=passkey_task(key), haystack=text,
        max_new_tokens=NEW_TOKENS, batch_size=9, add_bos=True, generator=generator)]
    scores[name] = needle.mean_score(records)
  print(f"pass-key retrieval: {scores}")
  assert generator.trace_counts == {"prefill": 1, "decode": 1}  # one bucket, both models
  assert scores["trained"] >= 0.75 and scores["untrained"] <= 0.25, scores
  assert scores["trained"] - scores["untrained"] >= 0.5, scores


@pytest.mark.slow
def test_cli_needle_on_the_trained_run(tmp_path, trained_run, tokenizer, haystack_file, capsys):
  run_dir, _ = trained_run
  out = tmp_path / "needle"
  argv = ["yijax", "eval", "needle", f"--ckpt={run_dir}", f"--tokenizer={tokenizer.path}", "--min_length=48",
          "--max_length=72", "--num_lengths=3", "--num_depths=3", f"--haystack={haystack_file}",
          "--needle=The pass key is 71432. Remember it.", "--question=What is the pass key? The pass key is",
          "--answer=71432", "--template={context}\\n{question}", f"--max_new_tokens={NEW_TOKENS}", "--add_bos",
          "--batch_size=9", f"--out={out}"]
  assert cli.main(argv) == 0
  printed = capsys.readouterr().out
  summary = json.loads(printed[printed.index("{"):])["needle"]
  records = [json.loads(line) for line in open(out / "needle.jsonl")]
  assert len(records) == summary["cells"] == 9 and os.path.getsize(out / "needle.png") > 0
  assert summary["mean_score"] == pytest.approx(np.mean([r["score"] for r in records]))
  assert summary["compilations"] == {"prefill": 1, "decode": 1} and summary["mean_score"] >= 0.75
  assert f"mean score {summary['mean_score']:.3f}" in printed
  assert cli.main(argv) == 0  # rerun: every cell is already there
  assert len(open(out / "needle.jsonl").read().splitlines()) == 9
  capsys.readouterr()
  assert cli.main(argv + ["--scoring=fu2024"]) == 0  # the same cells, Fu et al.'s score on the heatmap and mean
  printed = capsys.readouterr().out
  fu = json.loads(printed[printed.index("{"):])["needle"]
  assert fu["scoring"] == "fu2024" and fu["mean_score"] == pytest.approx(np.mean([r["fu_score"] for r in records]))
  assert cli.main(["yijax", "eval", "needle", f"--ckpt={run_dir}", f"--out={out}", "--min_length=9000"]) == 1
