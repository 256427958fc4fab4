"""Plots of seeded results, drawn with matplotlib's Figure API (no global backend or pyplot state), and
`save`, which writes a figure to a local path or a gs:// URL."""

from __future__ import annotations

import io
import os
from typing import Sequence

from yijax import paths


class _Figures:
  """pyplot's `subplots` and `close` on matplotlib's Figure API: report code draws through these, so no
  library call switches the process's matplotlib backend or keeps figures in pyplot's global registry."""

  @staticmethod
  def subplots(nrows: int = 1, ncols: int = 1, figsize=None, squeeze: bool = True, **kwargs):
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols, squeeze=squeeze, **kwargs)

  @staticmethod
  def close(figure) -> None:
    del figure  # a Figure not registered with pyplot is freed with its last reference


figures = _Figures()


def save(figure, location: str, dpi: int = 100) -> None:
  """Renders a figure into memory and writes the file through yijax.paths (a local path or a gs:// URL;
  the format from the file's extension)."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format=os.path.splitext(str(location))[1].lstrip(".") or "png", dpi=dpi)
  paths.write_bytes(location, buffer.getvalue())


def per_seed_points(location: str, values: dict[str, Sequence[float]], ylabel: str) -> None:
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
  save(figure, location, dpi=110)
