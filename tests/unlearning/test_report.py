"""The gold-band success test of the unlearning report: the gold model passes it by construction, the original
model and a model off on any one metric fail it, and each metric's measurement noise is read correctly."""

import math

import pytest

from yijax.unlearning import report

SPECS = [{"key": "forget_qa", "kind": "task", "task": "forget_qa"},
         {"key": "forget_loss", "kind": "loss", "set": "forget"},
         {"key": "general_bpb", "kind": "bpb", "set": "general_eval"},
         {"key": "mia_auc", "kind": "mia", "k": "30"}]


def _result(acc, loss, bpb, auc, n=128):
  return {"tasks": {"forget_qa": {"acc": acc, "n": n}}, "forget": {"loss": loss, "loss_se": 0.02},
          "general_eval": {"loss": 3.0, "loss_se": 0.03, "bits_per_byte": bpb},
          "mia": {"auc": {"30": auc}, "members": n}}


def _gold(results):
  values = {s["key"]: [] for s in SPECS}
  ses = {s["key"]: [] for s in SPECS}
  for r in results:
    for spec in SPECS:
      v, e = report.metric(r, spec)
      values[spec["key"]].append(v)
      ses[spec["key"]].append(e)
  return {"values": values, "se": ses}


def _test(result, gold):
  values, ses = report._values(result, SPECS)
  return report.band_test(values, ses, gold, SPECS)


def test_metrics_read_each_kind_with_its_measurement_noise():
  r = _result(0.5, 4.0, 2.0, 0.5, n=100)
  assert report.metric(r, SPECS[0]) == (0.5, pytest.approx(0.05))  # binomial: sqrt(0.25 / 100)
  assert report.metric(r, SPECS[1]) == (4.0, 0.02)
  assert report.metric(r, SPECS[2]) == (2.0, pytest.approx(2.0 * 0.03 / 3.0))  # relative se of the loss
  value, se = report.metric(r, SPECS[3])
  assert value == 0.5 and se == pytest.approx(math.sqrt((0.25 + 2 * 99 * (1 / 3 - 0.25)) / 100 ** 2))  # Hanley-McNeil
  with pytest.raises(ValueError, match="unknown metric kind"):
    report.metric(r, {"key": "x", "kind": "nope"})


def test_gold_seeds_pass_and_the_original_or_one_bad_metric_fails():
  golds = [_result(0.30, 5.60, 2.40, 0.52), _result(0.33, 5.55, 2.42, 0.55)]
  gold = _gold(golds)
  for g in golds:  # the construction: every gold seed is within its own model's band
    assert _test(g, gold)["success"]
  original = _test(_result(0.95, 4.10, 2.38, 0.93), gold)
  assert not original["success"] and not original["within"]["forget_qa"] and not original["within"]["mia_auc"]
  assert original["within"]["general_bpb"] and original["distance"] > 2
  unlearned = _test(_result(0.31, 5.62, 2.43, 0.54), gold)
  assert unlearned["success"] and unlearned["distance"] <= 2
  broken = _test(_result(0.31, 5.62, 3.40, 0.54), gold)  # forgot, but general text is ruined
  assert not broken["success"] and broken["within"]["forget_qa"] and not broken["within"]["general_bpb"]
  over = _test(_result(0.31, 9.50, 2.43, 0.54), gold)  # ascent past the gold loss is not gold either
  assert not over["within"]["forget_loss"]
