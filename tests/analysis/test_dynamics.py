"""Checkpoint-dynamics analysis on synthetic trajectories with known answers."""

import numpy as np
import pytest

from yijax.analysis import dynamics


def _records(curves):
  out = []
  for (task, metric), values in curves.items():
    for i, v in enumerate(values):
      out.append({"task": task, "metric": metric, "step": 10 * (i + 1), "tokens_seen": 1000 * (i + 1),
                  "flops": 1e9 * (i + 1), "value": v})
  return out


def test_spearman_and_domains():
  rising = np.linspace(0.2, 0.9, 8)
  curves = {("arith", "acc"): rising, ("facts", "acc"): rising[::-1],
            ("bpb_code", "bits_per_byte"): 3 - rising, ("cloze_code", "acc"): rising ** 2}
  trajs = dynamics.trajectories(_records(curves))
  assert trajs[("arith", "acc")].shape == (8, 4)
  keys, matrix, summary = dynamics.spearman_matrix(trajs)
  index = {k: i for i, k in enumerate(keys)}
  # bits per byte falls as ability rises: oriented, it correlates +1 with cloze_code
  assert matrix[index[("bpb_code", "bits_per_byte")], index[("cloze_code", "acc")]] == pytest.approx(1.0)
  assert matrix[index[("arith", "acc")], index[("facts", "acc")]] == pytest.approx(-1.0)
  assert summary["within"] == pytest.approx(1.0) and summary["pairs_within"] == 1
  assert summary["across"] < summary["within"]


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


def test_loss_decoupling_and_normalization():
  loss = np.array([[i, i, i, v] for i, v in enumerate([4.0, 3.5, 3.2, 3.1, 3.05, 3.0])])
  tracks = np.array([[i, i, i, v] for i, v in enumerate([0.1, 0.2, 0.3, 0.35, 0.37, 0.4])])
  flat = np.array([[i, i, i, v] for i, v in enumerate([0.25, 0.25, 0.24, 0.25, 0.6, 0.25])])
  good = dynamics.loss_decoupling(loss, tracks, ("arith", "acc"))
  bad = dynamics.loss_decoupling(loss, flat, ("arith", "acc"))
  assert good["spearman"] == pytest.approx(1.0) and good["steps_disagreeing"] == 0
  assert bad["spearman"] < 0.5 and bad["steps_disagreeing"] >= 3
  np.testing.assert_allclose(dynamics.normalized(np.array([1.0, 2.0, 4.0])), [0.25, 0.5, 1.0])


def test_plots_are_written(tmp_path):
  curves = {("arith", "acc"): np.linspace(0.2, 0.5, 5), ("bpb_docs", "bits_per_byte"): np.linspace(3, 2, 5)}
  trajs = dynamics.trajectories(_records(curves))
  dynamics.plot_curves({"1M": trajs, "3M": trajs}, str(tmp_path / "curves.png"))
  keys, matrix, _ = dynamics.spearman_matrix(trajs)
  dynamics.plot_matrix(keys, matrix, str(tmp_path / "spearman.png"), "title")
  dynamics.plot_normalized({"1M": trajs}, keys, str(tmp_path / "normalized.png"))
  for name in ("curves.png", "spearman.png", "normalized.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
