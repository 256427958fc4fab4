"""Checkpoint-dynamics analysis on synthetic trajectories with known answers."""

import numpy as np
import pytest

from yijax.analysis import dynamics


def _records(curves, tokens=None):
  out = []
  for (task, metric), values in curves.items():
    for i, v in enumerate(values):
      seen = 1000 * (i + 1) if tokens is None else tokens[i]
      out.append({"task": task, "metric": metric, "step": 10 * (i + 1), "tokens_seen": seen,
                  "flops": 1e9 * (i + 1), "value": v})
  return out


def test_distances_compare_shapes_not_ranks():
  tokens = np.geomspace(1e3, 1e6, 8)
  early = np.array([0.25, 0.6, 0.8, 0.9, 0.95, 0.97, 0.99, 1.0])
  late = np.array([0.25, 0.26, 0.27, 0.3, 0.4, 0.6, 0.85, 1.0])
  at_chance = np.array([0.25, 0.26, 0.24, 0.25, 0.27, 0.25, 0.24, 0.26])
  curves = {("cloze_code", "acc"): early, ("bpb_code", "bits_per_byte"): 4 - 2 * early,
            ("arith", "acc"): late, ("facts", "acc"): at_chance}
  trajs = dynamics.trajectories(_records(curves, tokens))
  # both rise monotonically, so their rank correlation would be 1; their shapes differ
  distance = dynamics.curve_distance(trajs[("cloze_code", "acc")], trajs[("arith", "acc")])
  assert distance > 0.3
  # bits per byte falls as ability rises: oriented, it has exactly cloze_code's shape
  same = dynamics.curve_distance(trajs[("bpb_code", "bits_per_byte")], trajs[("cloze_code", "acc")],
                                 keys=(("bpb_code", "bits_per_byte"), ("cloze_code", "acc")))
  assert same == pytest.approx(0.0, abs=1e-12)
  # a curve whose gain is within 2 se of zero (se of 120 items at 0.25: 0.0395) has no shape
  se = {("facts", "acc"): 0.0395}
  assert dynamics.curve_distance(trajs[("facts", "acc")], trajs[("arith", "acc")], se_a=0.0395) is None
  keys, matrix, summary = dynamics.distance_matrix(trajs, se=se)
  index = {k: i for i, k in enumerate(keys)}
  assert matrix[index[("bpb_code", "bits_per_byte")], index[("cloze_code", "acc")]] == pytest.approx(0.0, abs=1e-12)
  assert summary["within"] == pytest.approx(0.0, abs=1e-12) and summary["pairs_within"] == 1
  assert summary["across"] > 0.3 and summary["pairs_across"] == 2 and summary["static"] == ["facts/acc"]


def test_tokens_to_leave_chance_and_to_half_gain_by_hand():
  tokens = np.array([1e3, 1e4, 1e5, 1e6])
  traj = dynamics.trajectories(_records({("arith", "acc"): np.array([0.25, 0.27, 0.40, 0.65])}, tokens))[
      ("arith", "acc")]
  # chance 0.25, se 0.05: the first value >= 0.35 is at 1e5 tokens
  assert dynamics.tokens_to_leave_chance(traj, 0.25, 0.05) == 1e5
  assert dynamics.tokens_to_leave_chance(traj, 0.25, 0.25) is None
  # gain 0.40; half (0.45) lies between 0.40 at 1e5 and 0.65 at 1e6, a fifth of the way in log tokens
  assert dynamics.tokens_to_half_gain(traj) == pytest.approx(10 ** 5.2)
  assert dynamics.tokens_to_half_gain(traj, se=0.2) is None  # a gain of 0.4 < 2 * 0.2 * sqrt 2


def test_lagged_correlation_finds_who_moves_first():
  rng = np.random.default_rng(0)
  steps = np.cumsum(rng.random(30))
  jumps = np.zeros(30)
  jumps[[5, 12, 20]] = 1.0
  a = np.cumsum(jumps) + 0.01 * steps
  b = np.concatenate([[0, 0], a[:-2]])  # b repeats a two checkpoints later
  result = dynamics.lagged_correlation(a, b, max_lag=4)
  assert result["best_lag"] == 2 and result["correlation"] > 0.9
  assert dynamics.lagged_correlation(b, a, max_lag=4)["best_lag"] == -2


def test_loss_decoupling_counts_only_changes_beyond_two_se():
  loss = np.array([[i, i, i, v] for i, v in enumerate([4.0, 3.5, 3.2, 3.1, 3.05, 3.0])])
  tracks = np.array([[i, i, i, v] for i, v in enumerate([0.1, 0.2, 0.3, 0.35, 0.37, 0.4])])
  opposed = np.array([[i, i, i, v] for i, v in enumerate([0.6, 0.5, 0.4, 0.3, 0.2, 0.1])])
  flat = np.array([[i, i, i, v] for i, v in enumerate([0.25, 0.25, 0.24, 0.25, 0.25, 0.25])])
  good = dynamics.loss_decoupling(loss, tracks, ("arith", "acc"))
  assert good == {"steps_disagreeing": 0, "steps_agreeing": 5, "steps_resolved": 5, "steps": 5}
  assert dynamics.loss_decoupling(loss, opposed, ("arith", "acc"))["steps_disagreeing"] == 5
  # zero changes are no evidence; without a noise band the two 0.01 wiggles count (one each way)
  raw = dynamics.loss_decoupling(loss, flat, ("arith", "acc"))
  assert raw["steps_resolved"] == 2 and raw["steps_disagreeing"] == 1
  # with one evaluation's se of 0.01 a change must exceed 0.028: the wiggles are noise, not disagreement
  noisy = dynamics.loss_decoupling(loss, flat, ("arith", "acc"), metric_se=0.01)
  assert noisy["steps_resolved"] == 0 and noisy["steps_disagreeing"] == 0
  # with se 0.02 a change must exceed 0.0566: of tracks' changes only the first two (0.1, 0.1) do
  assert dynamics.loss_decoupling(loss, tracks, ("arith", "acc"), metric_se=0.02)["steps_resolved"] == 2
  np.testing.assert_allclose(dynamics.normalized(np.array([1.0, 2.0, 4.0])), [0.25, 0.5, 1.0])


def test_plots_are_written(tmp_path):
  curves = {("arith", "acc"): np.linspace(0.2, 0.5, 5), ("bpb_docs", "bits_per_byte"): np.linspace(3, 2, 5)}
  trajs = dynamics.trajectories(_records(curves))
  dynamics.plot_curves({"1M": trajs, "3M": trajs}, str(tmp_path / "curves.png"))
  keys, matrix, _ = dynamics.distance_matrix(trajs)
  dynamics.plot_matrix(keys, matrix, str(tmp_path / "distances.png"), "title")
  dynamics.plot_normalized({"1M": trajs}, keys, str(tmp_path / "normalized.png"))
  for name in ("curves.png", "distances.png", "normalized.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
