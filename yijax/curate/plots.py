"""The PNGs of a curation report (matplotlib's Figure API: no pyplot, no global backend)."""

from __future__ import annotations

import os

import numpy as np


def _figure(width=7.0, height=3.6):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(figure)
  return figure


def write(out_dir: str, report: dict, table) -> list[str]:
  """Writes waterfall.png, scores.png (when scored) and dedup_recall.png (with planted truth); their names."""
  names = []
  figure = _figure()
  axes = figure.add_subplot(1, 1, 1)
  labels = [row[0] for row in table]
  removed = [row[1] - row[2] for row in table]
  remaining = [row[2] for row in table]
  axes.bar(labels, remaining, color="#4c72b0", label="documents after the stage")
  axes.bar(labels, removed, bottom=remaining, color="#dd8452", label="removed by the stage")
  for x, r in enumerate(removed):
    if r:
      axes.annotate(f"-{r:,}", (x, remaining[x] + r), ha="center", va="bottom", fontsize=8)
  axes.set_ylabel("documents")
  axes.set_title("removal waterfall")
  axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(os.path.join(out_dir, "waterfall.png"))
  names.append("waterfall.png")
  scores = {k: v for k, v in report["scores"].items() if v["values"]}
  if scores:
    figure = _figure(4.0 * len(scores), 3.2)
    for index, (name, s) in enumerate(scores.items()):
      axes = figure.add_subplot(1, len(scores), index + 1)
      axes.hist(np.asarray(s["values"]), bins=40, color="#4c72b0")
      if s["threshold"] is not None:
        axes.axvline(s["threshold"], color="#c44e52", label=f"{s['direction']} {s['threshold']:.3g}")
        axes.legend(fontsize=8)
      axes.set_title(name)
    figure.tight_layout()
    figure.savefig(os.path.join(out_dir, "scores.png"))
    names.append("scores.png")
  quality = report.get("dedup_quality")
  if quality and quality["recall_by_edit_rate"]:
    figure = _figure(5.0, 3.2)
    axes = figure.add_subplot(1, 1, 1)
    rates = list(quality["recall_by_edit_rate"])
    axes.plot([float(r) for r in rates], [quality["recall_by_edit_rate"][r]["recall"] for r in rates], "o-")
    axes.set_xlabel("planted edit rate (fraction of words changed)")
    axes.set_ylabel("recall")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title(f"dedup recall by edit rate (precision {quality['precision']:.3f})")
    figure.tight_layout()
    figure.savefig(os.path.join(out_dir, "dedup_recall.png"))
    names.append("dedup_recall.png")
  return names
