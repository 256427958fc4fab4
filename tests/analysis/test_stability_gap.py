"""Stability-gap curve metrics: dip depth, recovery, peak; synthetic worlds; dense-evaluation config checks."""

import random

import numpy as np
import pytest

from yijax.analysis.stability_gap import gap_metrics
from yijax.data import synthetic_worlds as worlds
from yijax.eval import dense, multiple_choice
from yijax.models.config import ConfigError
from yijax.train import evaluation, layerwise
from yijax.train.config import base_config


def test_gap_metrics_of_a_v_shaped_curve():
  tokens = np.arange(8) * 1000.0
  accuracy = np.array([0.40, 0.33, 0.30, 0.36, 0.41, 0.47, 0.45, 0.44])
  m = gap_metrics(tokens, accuracy, items=400)
  assert m["dip"] == 0.30 and m["dip_tokens"] == 2000 and m["dip_depth"] == pytest.approx(0.10)
  assert m["recovery_tokens"] == 4000 and m["peak"] == 0.47 and m["peak_tokens"] == 5000
  assert m["final"] == 0.44 and m["gap"]  # 0.10 > 2 x sqrt(0.4 * 0.6 / 400)
  flat = gap_metrics(tokens, np.array([0.4, 0.41, 0.42, 0.45, 0.44, 0.46, 0.47, 0.47]), items=400)
  assert flat["dip_depth"] == 0.0 and flat["recovery_tokens"] == 0.0 and not flat["gap"]
  never = gap_metrics(tokens[:4], np.array([0.5, 0.3, 0.35, 0.4]))
  assert never["recovery_tokens"] is None and never["peak"] == 0.5


def test_synthetic_worlds_are_seeded_and_consistent():
  w = worlds.build(0, 20, 10, reference=5)
  again = worlds.build(0, 20, 10, reference=5)
  assert w == again and worlds.build(1, 20, 10, reference=5) != w
  names = [p.name for p in w.world_a + w.world_b + w.reference]
  assert len(set(names)) == len(names)
  texts = worlds.pretraining_texts(w, 0)
  assert len(texts["world_a_qa"]) == 2 * w.a_qa_count and len(texts["world_b_intro"]) == w.b_intro_count
  held_out = w.world_a[w.a_qa_count:]
  assert not any(p.name in qa for p in held_out for qa in texts["world_a_qa"])  # general task: QA never seen
  bio = worlds.biography(w.world_b[0], random.Random(0))
  assert all(getattr(w.world_b[0], a) in bio for a in worlds.ATTRIBUTES)
  items = worlds.qa_items(w.world_b, 0, "domain")
  assert len(items) == 4 * len(w.world_b)
  for item in items:
    multiple_choice._check_example(item, item["id"])
    assert len(set(item["choices"])) == 4
  domain, kinds = worlds.domain_texts(w, 0, 200, 0.3)
  assert 0.2 < np.mean([k != "clean" for k in kinds]) < 0.4 and len(domain) == 200
  validation = worlds.validation_texts(w.world_b, 0, "b")
  assert not set(validation) & set(domain)  # held-out paraphrases


def test_dense_evaluation_fields_and_negative_freeze_indices(tiny_config):
  config = base_config("tiny")
  config.eval.tasks = ["arith"]
  config.eval.every_steps, config.eval.tasks_every_steps = 4, 6
  with pytest.raises(ConfigError, match="eval.tasks_every_steps=6"):
    dense.check(config)
  config.eval.tasks_every_steps, config.eval.batches = 8, 0
  with pytest.raises(ConfigError, match="eval.batches"):
    dense.check(config)
  config.eval.batches = 1
  config.train.steps = 100
  context = evaluation.context(tiny_config, total_steps=100)  # no tokenizer: reading it would fail
  evaluate = dense.tasks_evaluator(config)(context)
  assert evaluate(None, 4) == {}  # not a multiple of tasks_every_steps: nothing scored, nothing read
  assert dense.task_key("/data/tasks/pubmedqa.jsonl") == "pubmedqa" and dense.task_key("arith") == "arith"
  import jax

  from yijax import models

  params = models.init_params(tiny_config, jax.random.key(0))
  top = layerwise.freeze_mask(tiny_config, params, [-1])
  last = layerwise.freeze_mask(tiny_config, params, [tiny_config.num_layers - 1])
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), top, last))
  with pytest.raises(ConfigError, match="optimizer.freeze_layers"):
    layerwise.freeze_mask(tiny_config, params, [-tiny_config.num_layers - 1])
