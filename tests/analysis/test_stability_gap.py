"""Stability-gap curve metrics: dip depth, recovery, peak; synthetic worlds; dense-evaluation config checks."""

import random

import numpy as np
import pytest

from yijax.analysis import stability_gap as gap
from yijax.data import synthetic_worlds as worlds
from yijax.eval import dense, multiple_choice
from yijax.models.config import ConfigError
from yijax.train import evaluation, layerwise
from yijax.train.config import base_config


def test_the_dip_is_read_from_the_seed_mean_against_the_start_band():
  tokens = np.tile(np.arange(8) * 1000.0, (3, 1))
  shape = np.array([0.40, 0.33, 0.28, 0.36, 0.41, 0.47, 0.45, 0.44])
  values = shape + np.array([[0.0], [0.01], [-0.01]]) * np.array([0, 1, 1, 1, 1, 1, 1, 1])
  s = gap.accuracy_summary(tokens, values, items=2000)
  dip = s["dip"]
  assert dip["value"] == pytest.approx(0.28) and dip["tokens"] == 2000 and dip["depth"] == pytest.approx(0.12)
  assert dip["verdict"] == "holds" and s["recovery_tokens"] == 4000  # back at the start at the 5th evaluation
  assert s["peak"]["value"] == pytest.approx(0.47) and s["peak"]["verdict"] == "holds"
  assert s["final"]["mean"] == pytest.approx(0.44) and s["final"]["se"] > 0
  noisy = gap.accuracy_summary(tokens, values, items=50)  # the same curves on 50 items: within item noise
  assert noisy["dip"]["verdict"] == "not resolved"
  spread = values.copy()
  spread[:, 2] = [0.10, 0.40, 0.40]  # one seed's crash: the seed mean dips, but the seeds disagree
  assert gap.accuracy_summary(tokens, spread, items=2000)["dip"]["verdict"] == "not resolved"


def test_strategies_are_compared_with_the_baseline_at_matched_tokens():
  keys = {"b_known_qa": "k", "b_unknown_qa": "u", "a_held_out_qa": "a", "domain_loss": "loss"}
  items = {"b_known_qa": 4000, "b_unknown_qa": 4000, "a_held_out_qa": 4000}
  base_tokens = np.tile(np.array([0, 100, 200, 400, 800.0]), (3, 1))
  baseline = {"tokens": base_tokens, "k": np.tile([0.5, 0.40, 0.45, 0.50, 0.60], (3, 1)) + [[0], [0.01], [-0.01]],
              "u": np.tile([0.25, 0.26, 0.30, 0.34, 0.40], (3, 1)), "a": np.tile([0.4] * 5, (3, 1)),
              "loss": np.tile([3.0, 2.5, 2.2, 2.0, 1.8], (3, 1))}
  mine = {"tokens": np.tile(np.array([0, 100, 200, 400.0]), (3, 1)),
          "k": np.tile([0.5, 0.49, 0.55, 0.60], (3, 1)) + [[0], [0.005], [-0.005]],
          "u": np.tile([0.25, 0.26, 0.30, 0.34], (3, 1)) + [[0.001], [0.0], [-0.001]],
          "a": np.tile([0.4] * 4, (3, 1)), "loss": np.tile([3.0, 2.4, 2.1, 1.95], (3, 1)) + [[0.01], [0], [-0.01]]}
  claims = {c["id"]: c for c in gap.matched_claims("hq", mine, baseline, keys, items)}
  known = claims["hq_b_known_qa_vs_baseline"]
  assert known["b_mean"] == pytest.approx(0.50) and known["diff"] == pytest.approx(0.10)  # baseline at 400 tokens
  assert known["verdict"] == "holds"
  assert claims["hq_b_unknown_qa_vs_baseline"]["verdict"] == "not resolved"  # equal at matched tokens
  assert claims["hq_domain_loss_vs_baseline"]["verdict"] == "holds"  # 1.95 < 2.0
  shallower = claims["hq_dip_shallower"]  # worst known accuracy within 400 tokens: 0.49 against 0.40
  assert shallower["diff"] == pytest.approx(0.09) and shallower["verdict"] == "holds"


def test_the_gate_passes_only_a_start_model_that_can_show_a_dip():
  from types import SimpleNamespace

  from yijax.studies import stability_gap as study

  args = SimpleNamespace(min_trained=0.5, min_sigmas=3.0)
  items = {"a_trained_qa": 200, "a_held_out_qa": 200, "b_known_qa": 520}
  good = {"tasks/a_trained_qa/acc": 0.9, "tasks/a_held_out_qa/acc": 0.4, "tasks/b_known_qa/acc": 0.35,
          "tasks/b_unknown_qa/acc": 0.25}
  assert study.gate(good, items, args)["passed"]
  chance = dict(good, **{"tasks/b_known_qa/acc": 0.27})  # 0.25 + 3 x 0.019 = 0.307 needed
  verdict = study.gate(chance, items, args)
  assert not verdict["passed"] and not verdict["checks"]["b_known_qa"]["passed"]
  assert verdict["checks"]["b_known_qa"]["threshold"] == pytest.approx(0.25 + 3 * (0.25 * 0.75 / 520) ** 0.5)
  assert not study.gate(dict(good, **{"tasks/a_trained_qa/acc": 0.45}), items, args)["passed"]


def test_synthetic_worlds_are_seeded_and_consistent():
  w = worlds.build(0, 20, 10, reference=5)
  again = worlds.build(0, 20, 10, reference=5)
  assert w == again and worlds.build(1, 20, 10, reference=5) != w
  names = [p.name for p in w.world_a + w.world_b + w.reference]
  assert len(set(names)) == len(names)
  texts = worlds.pretraining_texts(w, 0)
  assert len(texts["world_a_qa"]) == 2 * w.a_qa_count and len(texts["world_b_intro"]) == 2 * w.b_known_count
  assert not any(p.name in bio for p in w.b_unknown for bio in sum(texts.values(), []))  # never pretrained on
  held_out = w.world_a[w.a_qa_count:]
  assert not any(p.name in qa for p in held_out for qa in texts["world_a_qa"])  # general task: QA never seen
  bio = worlds.biography(w.world_b[0], random.Random(0))
  assert all(getattr(w.world_b[0], a) in bio for a in worlds.ATTRIBUTES)
  items = worlds.qa_items(w.world_b, 0, "domain")
  assert len(items) == 4 * len(w.world_b)
  for item in items:
    multiple_choice._check_example(item, item["id"])
    assert len(set(item["choices"])) == 4
  domain, kinds, who = worlds.domain_texts(w, 0, 200, 0.3)
  assert 0.2 < np.mean([k != "clean" for k in kinds]) < 0.4 and len(domain) == 200
  clean = [(text, w.world_b[i]) for text, kind, i in zip(domain, kinds, who) if kind == "clean"]
  assert all(getattr(person, a) in text and person.name in text for text, person in clean for a in worlds.ATTRIBUTES)
  narrative = set(s.split("{")[0] for v in worlds.SENTENCES.values() for s in v if not s.startswith("{"))
  assert not any(prefix and prefix in text for text, _ in clean for prefix in narrative)  # another register
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
