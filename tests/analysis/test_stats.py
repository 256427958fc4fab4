"""yijax/analysis/stats against values computed by hand."""

import json
import math

import pytest

from yijax.analysis import stats


def test_mean_se_by_hand():
  assert stats.mean_se([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1 / math.sqrt(3)))
  # the growth study's three scratch seeds: mean 4.76653, sample sd 0.075516, se 0.043599
  mean, se = stats.mean_se([4.8279, 4.7895, 4.6822])
  assert mean == pytest.approx(4.766533, abs=1e-6) and se == pytest.approx(0.043599, abs=1e-6)
  mean, se = stats.mean_se([7.5])
  assert mean == 7.5 and math.isnan(se)
  with pytest.raises(ValueError, match="non-empty"):
    stats.mean_se([])


def test_binomial_se_by_hand():
  assert stats.binomial_se(0.25, 1200) == pytest.approx(0.0125)
  assert stats.binomial_se(1.0, 10) == 0.0
  with pytest.raises(ValueError, match="num_items"):
    stats.binomial_se(0.5, 0)


def test_paired_and_unpaired_differences_by_hand():
  # per-seed differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, se 0.1 / sqrt(3)
  diff, se, n = stats.difference([4.0, 4.2, 4.4], [3.9, 4.0, 4.1])
  assert (diff, se, n) == pytest.approx((0.2, 0.1 / math.sqrt(3), 3))
  # unpaired: se = sqrt((1/sqrt 3)^2 + (2/sqrt 3)^2) = sqrt(5/3)
  diff, se, _ = stats.difference([1.0, 2.0, 3.0], [2.0, 4.0, 6.0], paired=False)
  assert diff == pytest.approx(-2.0) and se == pytest.approx(math.sqrt(5 / 3))
  # against a constant: the se of a alone
  diff, se, _ = stats.difference([1.0, 2.0, 3.0], 0.5)
  assert diff == pytest.approx(1.5) and se == pytest.approx(1 / math.sqrt(3))
  with pytest.raises(ValueError, match="as many values"):
    stats.difference([1.0, 2.0], [1.0, 2.0, 3.0])


def test_verdicts_at_the_two_se_boundary():
  assert stats.verdict(0.2, 0.1, +1) == stats.HOLDS        # exactly 2 se: holds
  assert stats.verdict(0.2, 0.1, -1) == stats.REFUTED
  assert stats.verdict(0.1999, 0.1, +1) == stats.NOT_RESOLVED
  assert stats.verdict(-0.3, 0.1, -1) == stats.HOLDS
  assert stats.verdict(0.5, math.nan, +1) == stats.NOT_RESOLVED  # one seed: no se, no verdict
  assert stats.verdict(0.0, 0.0, +1) == stats.NOT_RESOLVED


def test_claims_are_computed_and_serialisable():
  holds = stats.claim("x_above_y", "x is above y", "loss", "x", "y", [4.0, 4.2, 4.4], [3.9, 4.0, 4.1], "a > b")
  assert holds["verdict"] == "holds" and holds["diff"] == pytest.approx(0.2) and holds["n_seeds"] == 3
  assert set(holds) >= {"id", "statement", "metric", "a", "b", "diff", "se", "n_seeds", "verdict"}
  refuted = stats.claim("x_below_y", "x is below y", "loss", "x", "y", [4.0, 4.2, 4.4], [3.9, 4.0, 4.1], "a < b")
  assert refuted["verdict"] == "refuted"
  # the same difference within noise once a floor (e.g. a binomial se) is applied
  floored = stats.claim("f", "x is above y", "acc", "x", "y", [4.0, 4.2, 4.4], [3.9, 4.0, 4.1], "a > b", floor_se=0.15)
  assert floored["se"] == 0.15 and floored["verdict"] == "not resolved"
  single = stats.claim("one", "one seed", "loss", "x", "y", [4.0], [3.0], "a > b")
  assert single["verdict"] == "not resolved"
  json.dumps([holds, refuted, floored])
  with pytest.raises(ValueError, match="expect"):
    stats.claim("bad", "s", "m", "x", "y", [1.0], [2.0], "a >> b")


def test_dip_against_the_start_band_by_hand():
  # seed means of the curve: 0.51, 0.32, 0.475 -> worst at index 1 (se 0.02); start 0.51 +- 0.01
  dip = stats.dip([[0.5, 0.3, 0.45], [0.52, 0.34, 0.5]], [0.5, 0.52])
  assert dip["worst_index"] == 1 and dip["worst_mean"] == pytest.approx(0.32)
  assert dip["depth"] == pytest.approx(0.19) and dip["se"] == pytest.approx(math.sqrt(0.01**2 + 0.02**2))
  assert dip["verdict"] == "holds"
  # a curve that stays inside the start band is no dip, although its raw minimum is below the start mean
  flat = stats.dip([[0.50, 0.49, 0.52], [0.53, 0.52, 0.50]], [0.50, 0.53])
  assert flat["depth"] == pytest.approx(0.01) and flat["verdict"] == "not resolved"
  # lower is better (a loss): a rise is the dip
  loss = stats.dip([[2.0, 2.6], [2.1, 2.7]], [2.0, 2.1], higher_is_better=False)
  assert loss["worst_index"] == 1 and loss["depth"] == pytest.approx(0.6) and loss["verdict"] == "holds"


def test_format_mean_se():
  assert stats.format_mean_se(4.4471, 0.0123) == "4.447 ± 0.012"
  assert stats.format_mean_se(1.5, math.nan, 2) == "1.50"


def test_the_gold_band_passes_the_gold_model_and_fails_a_model_outside_it():
  gold = [10.0, 10.6]
  for seed_value in gold:  # each gold seed, as one run, is inside its own model's band
    assert stats.gold_band([seed_value], gold)["within"]
  for n in range(2, 7):  # by construction for up to 6 gold seeds, whatever their spread
    spread = [0.0] * (n - 1) + [1.0]
    assert all(stats.gold_band([v], spread)["within"] for v in spread)
  band = stats.gold_band([11.3], gold)  # sd_gold^2 = 0.18: se = sqrt(0.18 / 2 + 0.18); 1.0 away is inside 2 se
  assert band["se"] == pytest.approx(math.sqrt(0.27)) and band["diff"] == pytest.approx(1.0) and band["within"]
  assert not stats.gold_band([11.5], gold)["within"]  # 1.2 > 2 x 0.52
  assert not stats.gold_band([10.9, 10.95, 11.0], [10.0, 10.01, 10.02])["within"]  # tight seeds, a real gap
  assert stats.gold_band([0.52], [0.50, 0.50], floor_se=0.02)["within"]  # identical gold seeds: the floor decides
  assert not stats.gold_band([0.56], [0.50, 0.50], floor_se=0.02)["within"]
  with pytest.raises(ValueError, match="at least 2 seeds"):
    stats.gold_band([1.0], [1.0])
