"""The offline evaluation battery: deterministic by seed, evaluation items never in the
pretraining text, corpus tasks only from the held-out split, JSONL paths as tasks, and
a tiny model trained on the arith text (through the real training loop) beating chance
on `arith` where its untrained initialization does not."""

import json
import os
import re

import jax
import numpy as np
import pytest

from yijax import models
from yijax.data import corpus
from yijax.eval import multiple_choice
from yijax.eval import tasks
from yijax.eval.tasks import synthetic
from yijax.models.config import ModelConfig

SMALL = {"num_items": 40, "bpb_max_bytes": 16384, "num_sequences": 8, "span_len": 16, "facts_per_group": 8,
         "vocab_size": 300}
ARITH_LINE = re.compile(r"^(\d+) \+ (\d+) = (\d+)$|^Which is (larger|smaller): (\d+) or (\d+)\? Answer: (\d+)$")
EVAL_ITEM = re.compile(r"^(\d+) \+ (\d+) =$|^Which is (?:larger|smaller): (\d+) or (\d+)\? Answer:$")


def _fingerprint(task):
  data = task.data
  if isinstance(data, dict):
    data = {k: np.asarray(v).tolist() for k, v in data.items()}
  return json.dumps({"kind": task.kind, "items": task.items, "data": data}, sort_keys=True)


@pytest.fixture(scope="module")
def arith_tokenizer(tmp_path_factory):
  """A 300-piece Yi-settings tokenizer trained on a sample of the arith pretraining text."""
  from yijax.data.tokenizer import train_tokenizer

  directory = tmp_path_factory.mktemp("arith_tok")
  sample = directory / "sample.txt"
  sample.write_text("\n".join(synthetic.arith_documents(seed=7, num_examples=3000)) + "\n")
  return train_tokenizer([str(sample)], 300, str(directory / "tok"))


def _tiny_config(vocab_size, **changes):
  values = dict(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                mlp_dim=192, rope_theta=10000.0, max_seq_len=128, attention_impl="xla")
  values.update(changes)
  return ModelConfig(**values)


def test_tasks_are_deterministic_by_seed():
  for name in tasks.TASKS:
    first, again = (_fingerprint(tasks.build_task(name, 0, _lenient=True, **SMALL)) for _ in range(2))
    other = _fingerprint(tasks.build_task(name, 1, _lenient=True, **SMALL))
    assert first == again, name
    if name != "bpb_docs":  # all 8 KB of held-out docs fit the budget: the seed only orders the pieces
      assert first != other, name
  with pytest.raises(ValueError, match=r"task 'arith' takes no option\(s\) \['context_lines'\]"):
    tasks.build_task("arith", 0, context_lines=3)
  with pytest.raises(ValueError, match="unknown task 'arithmetic'"):
    tasks.build_task("arithmetic", 0)


def test_corpus_tasks_come_only_from_the_held_out_split():
  for source in corpus.SOURCES:
    train_ids = {d for d in corpus.document_ids(source) if corpus.split_of(d) == "train"}
    held_out = dict(corpus.documents(source, "validation"))
    assert held_out and not train_ids & set(held_out)
    kind = source.split("_")[1]
    bpb = tasks.build_task(f"bpb_{kind}", 3, bpb_max_bytes=1 << 15)
    for piece in bpb.data:
      assert piece["doc"] in held_out and piece["text"] in held_out[piece["doc"]]
    lines = {line.rstrip() for text in held_out.values() for line in text.split("\n")}
    cloze = tasks.build_task(f"cloze_{kind}", 3, num_items=60)
    assert cloze.chance == 0.25 and len(cloze.items) >= 40
    for item in cloze.items:
      doc_lines = [line.rstrip() for line in held_out[item["doc"]].split("\n")]
      assert item["choices"][item["answer"]] == doc_lines[item["line"] - 1]
      assert item["context"] == "\n".join(doc_lines[item["line"] - 9:item["line"] - 1]) + "\n"
      assert len(set(item["choices"])) == 4 and set(item["choices"]) <= lines


def test_arith_and_facts_items_never_in_the_pretraining_text(tmp_path, arith_tokenizer):
  written = tasks.pretraining_sources(str(tmp_path), arith_tokenizer.path, seed=5, arith_examples=3000,
                                      facts_per_group=8)
  assert written == ["facts", "arith"]
  from yijax.data import pipeline, records

  manifest = pipeline.read_manifest(str(tmp_path), "train", written)
  pipeline.read_manifest(str(tmp_path), "validation", written)  # the held-out loss can read them too

  def stream(name):
    shards = [os.path.join(str(tmp_path), s["path"]) for s in manifest["splits"]["train"][name]["shards"]]
    return [arith_tokenizer.decode(doc) for shard in shards for doc in records.read_shard(shard)]

  arith_text = stream("arith")
  assert arith_text == synthetic.arith_documents(5, 3000)  # the prepared stream is this text, losslessly
  trained = set()
  for line in "\n".join(arith_text).split("\n"):
    match = ARITH_LINE.match(line)
    assert match, line
    g = match.groups()
    a, b, form = (int(g[0]), int(g[1]), "add") if g[0] else (int(g[4]), int(g[5]), "compare")
    assert int(g[2] or g[6]) == (a + b if form == "add" else max(a, b) if g[3] == "larger" else min(a, b))
    trained.add((form, min(a, b), max(a, b)))
  for seed in range(3):
    arith = tasks.build_task("arith", seed, num_items=300)
    assert arith.chance == pytest.approx(0.375)
    for item in arith.items:
      g = EVAL_ITEM.match(item["context"]).groups()
      a, b = (int(g[0]), int(g[1])) if g[0] else (int(g[2]), int(g[3]))
      assert (item["group"], min(a, b), max(a, b)) not in trained
      assert len({len(c) for c in item["choices"]}) == 1  # no length cue

  facts_text = " ".join(stream("facts"))
  assert facts_text == " ".join(synthetic.facts_documents(5, facts_per_group=8))
  sentences = re.split(r"(?<=\.) ", facts_text)
  facts = tasks.build_task("facts", 5, facts_per_group=8)
  table = synthetic.facts_table(5, facts_per_group=8)
  for fact, item in zip(table, facts.items):
    mentions = [s for s in sentences if re.search(rf"\b{fact['entity']}\b", s)]
    assert len(mentions) == fact["k"] and item["group"] == f"k{fact['k']}"
    assert all(re.search(rf"\b{fact['city']}\b", s) for s in mentions)
    assert (f"The capital of {fact['entity']} is {fact['city']}." in mentions) == (fact["k"] > 0)
    assert item["context"] == f"The capital of {fact['entity']} is" and item["choices"][item["answer"]] == fact["city"]
    wrong = [c for i, c in enumerate(item["choices"]) if i != item["answer"]]
    assert not any(re.search(rf"\b{c}\b", s) for s in mentions for c in wrong)


def test_every_task_scores_and_a_jsonl_path_is_a_task(tmp_path, arith_tokenizer):
  config = _tiny_config(320)
  params = models.init_params(config, jax.random.key(0))
  examples = [{"context": "12 + 30 =", "choices": ["42", "52"], "answer": 0, "group": "add"},
              {"context": "Which is larger: 17 or 71? Answer:", "choices": ["17", "71"], "answer": 1},
              {"context": "9 + 9 =", "choices": ["18", "17", "19"], "answer": 0, "group": "add"}]
  path = tmp_path / "exported.jsonl"
  path.write_text("".join(json.dumps(e) + "\n" for e in examples))
  names = list(tasks.TASKS) + [str(path)]
  results = tasks.evaluate_tasks(config, params, arith_tokenizer, names, seed=0, batch_size=16,
                                 **{**SMALL, "num_items": 8, "bpb_max_bytes": 2048, "facts_per_group": 4})
  assert list(results) == names
  for name in ("bpb_docs", "bpb_code"):
    assert set(results[name]) == {"bits_per_byte", "loss"} and 0 < results[name]["bits_per_byte"] < 20
  assert set(results["arith"]) == {"acc", "acc_norm", "acc_add", "acc_compare"}
  assert set(results["facts"]) == {"acc", "acc_norm"} | {f"acc_k{k}" for k in synthetic.FACTS_K}
  assert set(results["induction"]) == {"acc", "loss"} and 0 <= results["induction"]["acc"] <= 1
  reference = multiple_choice.score_multiple_choice(config, params, arith_tokenizer, examples)
  assert results[str(path)]["acc"] == reference["acc"] and results[str(path)]["acc_norm"] == reference["acc_norm"]
  assert set(results[str(path)]) == {"acc", "acc_norm", "acc_add"}
  with pytest.raises(ValueError, match=r"unknown task option\(s\) \['num_itmes'\]"):
    tasks.evaluate_tasks(config, params, arith_tokenizer, ["arith"], num_itmes=3)


ARITH_RUN_CONFIG = '''
import ml_collections
from yijax import configlib
from yijax.models import presets
from yijax.train.config import base_config


def get_config():
  config = base_config("tiny")
  config.model = presets.config_dict("tiny", vocab_size=300, hidden_size=64, num_layers=2, num_heads=4,
                                     num_kv_heads=2, head_dim=16, mlp_dim=192, max_seq_len=128)
  config = configlib.apply_overrides(config, {
      "train.steps": 800, "train.batch_size": 16, "train.seq_len": 64, "train.progress_bar": False,
      "optimizer.lr": 3e-3, "optimizer.warmup_steps": 10, "eval.batches": 0, "checkpoint.every_steps": 800})
  with config.data.unlocked():
    config.data.prepared_dir = "DATA"
    config.data.sources = {"arith": 1.0}
  return config
'''


@pytest.mark.slow  # an end-to-end training (15-65 s on 2 cores): CI runs it, the inner loop does not
def test_a_model_trained_on_the_arith_text_beats_chance_and_an_untrained_one_does_not(tmp_path, arith_tokenizer):
  """800 steps of `yijax train` on the arith pretraining text alone (one CPU device, ~35 s): measured
  acc 0.565 (comparison 0.86) against the untrained initialization's 0.385; chance is 0.375."""
  import subprocess
  import sys

  from yijax.train import params_io

  data = tmp_path / "data"
  tasks.pretraining_sources(str(data), arith_tokenizer.path, seed=5, facts=False, arith_examples=20000)
  config = tmp_path / "arith_run.py"
  config.write_text(ARITH_RUN_CONFIG.replace("DATA", str(data)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "yijax.cli", "train", f"--config={config}",
                           f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  config, trained = params_io.load_model(str(tmp_path / "run"))
  untrained = models.init_params(config, jax.random.key(0))
  scores = {name: tasks.evaluate_tasks(config, params, arith_tokenizer, ["arith"], seed=0, num_items=200,
                                       batch_size=64)["arith"] for name, params in (("trained", trained),
                                                                                    ("untrained", untrained))}
  chance = tasks.build_task("arith", 0, num_items=200).chance
  assert scores["untrained"]["acc"] <= chance + 0.075, scores
  assert scores["trained"]["acc"] >= chance + 0.125 and scores["trained"]["acc_compare"] >= 0.7, scores
