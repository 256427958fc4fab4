"""KV-cache generation: equals full-forward greedy decoding and transformers."""

import jax
import numpy as np
import pytest
import torch

from yijax.convert import hf
from yijax.eval import generate as gen
from yijax.train import params_io

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [42]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  from conftest import make_hf_llama

  root = tmp_path_factory.mktemp("gen")
  model = make_hf_llama(root / "hf", num_hidden_layers=2)
  hf.hf_to_yijax(str(root / "hf"), str(root / "yx"))
  config, params = params_io.load_model(str(root / "yx"))
  return model, config, params


def test_greedy_cached_equals_full_forward_argmax(converted):
  _, config, params = converted
  outputs = gen.Generator(config, params).generate(PROMPTS, 10)
  for prompt, out in zip(PROMPTS, outputs):
    assert out == gen.greedy_reference(config, params, prompt, 10)


def test_greedy_equals_transformers_generate(converted):
  model, config, params = converted
  outputs = gen.Generator(config, params).generate(PROMPTS, 12)
  for prompt, out in zip(PROMPTS, outputs):
    with torch.no_grad():
      ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert out == ref


def test_prefill_and_decode_compile_once(converted):
  _, config, params = converted
  generator = gen.Generator(config, params)
  generator.generate([[1, 2], [3, 4, 5]], 6)
  generator.generate([[9, 9, 9], [7]], 9, gen.Sampling(temperature=0.8, top_k=5), seed=3, stop_ids=[4])
  generator.generate([[8, 1, 2, 3], [6]], 4, gen.Sampling(temperature=1.0, top_p=0.5), seed=1)
  assert generator.trace_counts == {"prefill": 1, "decode": 1}


def test_stop_tokens_end_each_prompt(converted):
  _, config, params = converted
  generator = gen.Generator(config, params)
  free = generator.generate(PROMPTS, 10)
  stop = free[1][3]
  stopped = generator.generate(PROMPTS, 10, stop_ids=[stop])
  for out_free, out_stop in zip(free, stopped):
    expected = out_free[: out_free.index(stop) + 1] if stop in out_free else out_free
    assert out_stop == expected


def test_sampling_is_seeded_and_respects_top_k(converted):
  _, config, params = converted
  generator = gen.Generator(config, params)
  settings = gen.Sampling(temperature=1.5, top_k=3)
  a = generator.generate(PROMPTS, 8, settings, seed=7)
  assert a == generator.generate(PROMPTS, 8, settings, seed=7)
  assert a != generator.generate(PROMPTS, 8, settings, seed=8)


def test_sample_logits_filters():
  logits = np.log(np.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000, np.float32))
  keys = jax.random.key(0)
  top_k = np.asarray(gen.sample_logits(logits, keys, 1.0, 2, 1.0))
  assert set(top_k) == {0, 1}
  top_p = np.asarray(gen.sample_logits(logits, keys, 1.0, 0, 0.7))
  assert set(top_p) == {0, 1}  # 0.5 < 0.7 <= 0.8
  assert abs((top_p == 0).mean() - 0.5 / 0.8) < 0.03
  full = np.asarray(gen.sample_logits(logits, keys, 1.0, 0, 1.0))
  assert abs((full == 3).mean() - 0.05) < 0.015
  greedy = np.asarray(gen.sample_logits(logits, keys, 0.0, 0, 1.0))
  assert (greedy == 0).all()


def test_bad_sampling_settings():
  with pytest.raises(ValueError, match="top_p"):
    gen.Sampling(top_p=0.0).validate()
  with pytest.raises(ValueError, match="temperature"):
    gen.Sampling(temperature=-1).validate()
