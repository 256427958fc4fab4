"""Plots of seeded results, drawn with matplotlib's Figure API (no global backend or pyplot state)."""

from __future__ import annotations

from typing import Sequence


def per_seed_points(path: str, values: dict[str, Sequence[float]], ylabel: str) -> None:
  """One column per arm: each seed's value as a dot, the seed mean as a bar with +-2 standard errors."""
  from matplotlib.figure import Figure

  from yijax.analysis import stats

  figure = Figure(figsize=(1.6 + 1.3 * len(values), 3.6))
  axes = figure.subplots()
  for x, (arm, seeds) in enumerate(values.items()):
    axes.scatter([x] * len(seeds), seeds, s=14, color="tab:blue", zorder=3)
    mean, se = stats.mean_se(seeds)
    if se == se:  # a known se (two seeds or more)
      axes.errorbar([x + 0.15], [mean], yerr=[2 * se], fmt="s", color="black", capsize=4, markersize=4)
  axes.set_xticks(range(len(values)), list(values), rotation=20)
  axes.set_ylabel(ylabel)
  axes.set_title("per seed (dots); mean +- 2 se (squares)", fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
