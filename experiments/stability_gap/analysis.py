"""The stability-gap study's report: curves, dips, recoveries and peaks of every arm (yijax/analysis/stability_gap.py)."""

import json
import os

from yijax.analysis import stability_gap
from yijax.studies.stability_gap import BASE_EVAL


def _items(path: str) -> int:
  with open(path) as f:
    return sum(1 for line in f if line.strip())


def analyze(args, stage_dir, context) -> dict:
  with open(os.path.join(context.stage_dir("base_eval"), BASE_EVAL)) as f:
    base = json.load(f)
  arms = {arm: context.stage_dir(arm) for arm in args.arms}
  items = {"domain_acc": _items(args.domain_items), "general_acc": _items(args.general_items)}
  data = context.summaries.get("data", {})
  extra = {"data": {k: v for k, v in data.items() if k not in ("tokenizer", "prepared")},
           "scale": context.study.get("scale")}
  payload = stability_gap.report(arms, base, dict(args["keys"]), items, context.workdir, dict(args.labels), extra)
  return {"arms": list(payload["arms"]),
          "gaps": {arm: r.get("domain_acc", {}).get("gap") for arm, r in payload["arms"].items()}}
