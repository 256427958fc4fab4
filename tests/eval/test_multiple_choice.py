"""Multiple-choice log-likelihood: equal to a full forward pass per request,
lm-eval's tokenization and truncation, bounded compilations, and (when
lm-evaluation-harness is installed) equal to lm-eval on the same HF model."""

import functools
import json
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lm_eval_reference as reference
from yijax import models
from yijax.eval import multiple_choice as mc
from yijax.models.config import ModelConfig

MAX_LEN = 40


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return reference.train_small_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def tiny(tokenizer):
  config = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                       num_kv_heads=2, mlp_dim=64, rope_theta=10000.0, max_seq_len=128, attention_impl="xla")
  return config, models.init_params(config, jax.random.key(0))


def make_examples(seed, count, long_context_every=5):
  """Contexts with trailing spaces/newlines, an empty one, long ones; ASCII and non-ASCII choices."""
  rng = random.Random(seed)
  words = reference.WORDS
  examples = []
  for i in range(count):
    longest = 40 if i % long_context_every == 0 else 8
    context = " ".join(rng.choice(words) for _ in range(rng.randint(2, longest)))
    if i % 4 == 1:
      context += " "
    if i % 4 == 2:
      context = context.capitalize() + ":\n"
    if i == 7:
      context = ""
    choices = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
               for _ in range(rng.randint(2, 4))]
    if i % 3 == 0:
      choices[0], choices[-1] = "café", "中文 ok"
    answer = rng.randrange(len(choices))
    examples.append({"id": f"q{i}", "context": context, "choices": choices, "answer": answer})
  return examples


@functools.lru_cache(maxsize=None)
def jitted_apply(config):
  return jax.jit(lambda params, tokens: models.apply(config, params, tokens))


def full_forward_log_probs(config, params, ids, length=128):
  """float64 log-softmax [len(ids), vocab] of one sequence (right-padded: causal attention ignores it)."""
  padded = np.zeros((1, length), np.int32)
  padded[0, :len(ids)] = ids
  logits = np.asarray(jitted_apply(config)(params, jnp.asarray(padded)), np.float64)[0, :len(ids)]
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def expected_score(config, params, context_ids, continuation_ids, max_len):
  """(sum log p(continuation), all greedy) with lm-eval's left truncation, by a direct forward pass."""
  window = (context_ids + continuation_ids)[-(max_len + 1):]
  inputs, targets = window[:-1], window[1:]
  log_probs = full_forward_log_probs(config, params, inputs)
  scored = range(len(inputs) - len(continuation_ids), len(inputs))
  total = sum(log_probs[t, targets[t]] for t in scored)
  return total, all(int(np.argmax(log_probs[t])) == targets[t] for t in scored)


def test_load_tasks_reads_lines_and_names_bad_ones(tmp_path):
  good = {"context": "Q:", "choices": ["a", "b"], "answer": 1, "id": "x"}
  path = tmp_path / "ok.jsonl"
  path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "answer": 0}) + "\n")
  assert [e["answer"] for e in mc.load_tasks(str(path))] == [1, 0]
  bad_lines = {
      "missing field": ({"context": "Q:", "choices": ["a"]}, "answer"),
      "answer out of range": ({**good, "answer": 2}, "out of range"),
      "empty choices": ({**good, "choices": [], "answer": 0}, "non-empty"),
      "choice not a string": ({**good, "choices": ["a", 3]}, "string"),
  }
  for name, (bad, message) in bad_lines.items():
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(mc.TaskFileError, match=message) as error:
      mc.load_tasks(str(path))
    assert f"{path}:2" in str(error.value), name
  path.write_text("{not json\n")
  with pytest.raises(mc.TaskFileError, match=":1: not valid JSON"):
    mc.load_tasks(str(path))


def test_encode_request_follows_lm_eval(tokenizer):
  encode = tokenizer.encode
  context_ids, continuation_ids = mc.encode_request(tokenizer, "the cat", " sat down", add_bos=False)
  assert context_ids == encode("the cat")
  assert context_ids + continuation_ids == encode("the cat sat down")
  # trailing whitespace of the context moves to the continuation
  context_ids, continuation_ids = mc.encode_request(tokenizer, "the cat \n", " sat", add_bos=True)
  assert context_ids == [tokenizer.bos_id] + encode("the cat")
  assert continuation_ids == encode("the cat \n sat")[len(encode("the cat")):]
  # an empty context is the BOS token alone
  empty = mc.encode_request(tokenizer, "", " brown fox", add_bos=False)
  assert empty == ([tokenizer.bos_id], encode(" brown fox"))


def test_scores_equal_a_full_forward_pass(tokenizer, tiny):
  config, params = tiny
  examples = [
      {"context": "the quick brown fox", "choices": ["jumps", "sat on a mat", "café"], "answer": 0},
      {"context": "Blue river:", "choices": ["stone", "green tree 42", "中"], "answer": 2},
      {"context": "a", "choices": ["dark", "light", "water fire light dark"], "answer": 1},
  ]
  result = mc.score_multiple_choice(config, params, tokenizer, examples, batch_size=2, add_bos=True)
  hits = hits_norm = 0
  for example, record in zip(examples, result["records"]):
    lls, greedy = [], []
    for choice in example["choices"]:
      context_ids = [tokenizer.bos_id] + tokenizer.encode(example["context"])
      whole = [tokenizer.bos_id] + tokenizer.encode(example["context"] + " " + choice)
      total, is_greedy = expected_score(config, params, context_ids, whole[len(context_ids):],
                                        config.max_seq_len)
      lls.append(total)
      greedy.append(is_greedy)
    np.testing.assert_allclose(record["loglikelihoods"], lls, atol=1e-4, rtol=1e-5)
    assert record["is_greedy"] == greedy
    hits += int(np.argmax(lls)) == example["answer"]
    hits_norm += int(np.argmax(np.array(lls) / [len(c) for c in example["choices"]])) == example["answer"]
  assert result["acc"] == hits / 3 and result["acc_norm"] == hits_norm / 3
  assert result["n"] == 3 and result["requests"] == 9 and result["truncated"] == 0


def test_long_inputs_are_truncated_from_the_left(tokenizer, tiny):
  config, params = tiny
  examples = make_examples(1, 6, long_context_every=2)
  result = mc.score_multiple_choice(config, params, tokenizer, examples, batch_size=4, max_len=12)
  assert result["truncated"] > 0
  for example, record in zip(examples, result["records"]):
    for choice, ll in zip(example["choices"], record["loglikelihoods"]):
      context_ids, continuation_ids = mc.encode_request(tokenizer, example["context"], " " + choice, False)
      expected, _ = expected_score(config, params, context_ids, continuation_ids, 12)
      np.testing.assert_allclose(ll, expected, atol=1e-4, rtol=1e-5)


def test_one_compilation_per_length_bucket(tokenizer, tiny, tmp_path):
  config, params = tiny
  examples = make_examples(2, 12)
  requests = mc.build_requests(tokenizer, examples, False, " ", config.max_seq_len)
  buckets = {mc.bucket_length(len(r.inputs), config.max_seq_len) for r in requests}
  assert len(buckets) >= 2
  # batch_size 3 is used by no other test, so every bucket compiles here, once
  first = mc.score_multiple_choice(config, params, tokenizer, examples, batch_size=3,
                                   records_path=str(tmp_path / "records.jsonl"))
  again = mc.score_multiple_choice(config, params, tokenizer, examples[::-1], batch_size=3)
  assert first["compilations"] == len(buckets)
  assert again["compilations"] == 0
  assert again["acc"] == first["acc"] and again["acc_norm"] == first["acc_norm"]
  written = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
  assert [r["id"] for r in written] == [e["id"] for e in examples]
  assert written[0]["loglikelihoods"] == first["records"][0]["loglikelihoods"]


def test_equals_lm_evaluation_harness(tokenizer, tmp_path):
  """Per-request log-likelihoods, is_greedy, acc, acc_norm, acc_bytes against lm-eval on the HF model."""
  if not os.environ.get("CI"):  # CI installs the [test] extras, lm_eval included: never skip there
    pytest.importorskip("lm_eval")
    pytest.importorskip("google.protobuf")
  from conftest import make_hf_llama
  from yijax.convert import hf
  from yijax.train import params_io

  hf_dir, yijax_dir = tmp_path / "hf", tmp_path / "yx"
  make_hf_llama(hf_dir, vocab_size=tokenizer.vocab_size)
  hf.hf_to_yijax(str(hf_dir), str(yijax_dir))
  config, params = params_io.load_model(str(yijax_dir))
  reference.write_hf_tokenizer(tokenizer.path, str(hf_dir))
  examples = make_examples(3, 20)
  task_dir = reference.write_task(str(tmp_path / "task"), examples)
  # lm-eval's default (add_bos_token unset) follows the tokenizer, which adds none here
  for add_bos_token in (None, True):
    theirs = reference.run_lm_eval(str(hf_dir), task_dir, MAX_LEN, add_bos_token)
    ours = mc.score_multiple_choice(config, params, tokenizer, examples, batch_size=4, max_len=MAX_LEN,
                                    add_bos=bool(add_bos_token))
    assert ours["truncated"] > 0
    for example, doc, record in zip(examples, theirs["docs"], ours["records"]):
      assert doc["arguments"] == [(example["context"], " " + c) for c in example["choices"]]
      np.testing.assert_allclose(record["loglikelihoods"], doc["lls"], atol=1e-4, rtol=1e-5)
      assert record["is_greedy"] == doc["is_greedy"]
    for metric in ("acc", "acc_norm", "acc_bytes"):
      assert ours[metric] == pytest.approx(theirs[metric]), metric
