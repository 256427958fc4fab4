"""The checkpoint evaluator's `layer_cosine` pseudo-task: per-layer and model-level values per checkpoint."""

import jax
import numpy as np
import pytest

from yijax import models
from yijax.analysis import layer_cosine
from yijax.data import pipeline
from yijax.data.tokenizer import Tokenizer
from yijax.eval import checkpoints
from yijax.models.config import ModelConfig
from yijax.train import params_io


def test_layer_cosine_at_every_checkpoint(tmp_path, prepared_data):
  tokenizer_path = pipeline.read_manifest(prepared_data)["tokenizer"]["path"]
  config = ModelConfig(vocab_size=4096, hidden_size=32, num_layers=5, num_heads=2, num_kv_heads=1, mlp_dim=48,
                       rope_theta=1e4, max_seq_len=128)
  saved = {}
  for step in (10, 20):
    saved[step] = models.init_params(config, jax.random.key(step))
    params_io.save_model(str(tmp_path / "released" / f"step-{step}"), saved[step], config)
  options = {"layer_cosine_docs": 3, "layer_cosine_tokens": 40}
  out = checkpoints.evaluate_checkpoints(str(tmp_path / "released"), [checkpoints.LAYER_COSINE],
                                         tokenizer_path=tokenizer_path, options=options)
  records = checkpoints.load_results(out)
  assert [(r["step"], r["metric"]) for r in records] == [
      (step, m) for step in (10, 20) for m in ["layer/0", "layer/1", "layer/2", "layer/3", "layer/4", "model_level"]]
  # the same numbers as layer_cosine on the held-out documents, each truncated to 40 tokens
  texts = checkpoints._held_out_texts(3)
  assert len(texts) == 3 and len(set(texts)) == 3
  tokenizer = Tokenizer(tokenizer_path)
  rows = [tokenizer.encode(t, add_bos=True)[:40] for t in texts]
  tokens = np.array([r + [0] * (40 - len(r)) for r in rows])
  segments = np.array([[1] * len(r) + [0] * (40 - len(r)) for r in rows])
  expected = layer_cosine.layer_cosine(config, saved[20], tokens, segment_ids=segments)
  values = {r["metric"]: r["value"] for r in records if r["step"] == 20}
  np.testing.assert_allclose([values[f"layer/{i}"] for i in range(5)], expected["per_layer"], rtol=1e-6)
  assert values["model_level"] == pytest.approx(np.mean(expected["per_layer"][1:3]))
  # rerun: nothing repeated
  checkpoints.evaluate_checkpoints(str(tmp_path / "released"), [checkpoints.LAYER_COSINE],
                                   tokenizer_path=tokenizer_path, options=options)
  assert len(checkpoints.load_results(out)) == len(records)
