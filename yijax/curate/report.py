"""DIR/report.json, DIR/report.md and the PNGs of a `yijax curate` run, read back from what the stages wrote.

Documents and bytes after every stage (the waterfall), removals per stage and reason with a few samples,
the learned scores' histograms with their thresholds, the MinHash candidate pairs, the clusters, the bad
input, and, when the input carries planted truth (`evaluation.truth_field`: the id of the document a
copy was made from, and `edit_rate`), the deduplication's precision and recall.
"""

from __future__ import annotations

import collections
import glob
import json
import os

import numpy as np

from yijax.data import manifest

STAGES = ("input", "heuristics", "langid", "learned", "exact", "near", "subdoc", "clusters")
OUTPUTS = {"learned": "filtered", "exact": "exact", "near": "near", "subdoc": "subdoc", "clusters": "final"}


def _jsonl(pattern: str):
  for path in sorted(glob.glob(pattern)):
    with open(path, encoding="utf-8") as f:
      for line in f:
        yield json.loads(line)


def _size(text: str) -> int:
  return len(text.encode("utf-8", errors="replace"))


def _removed(out_dir: str, stage: str, samples: int):
  reasons, examples, size = collections.Counter(), collections.defaultdict(list), 0
  for row in _jsonl(os.path.join(out_dir, "removed", stage, "*.jsonl")):
    reason = row["reason"]
    reasons[reason] += 1
    size += row["metadata"].get("bytes", 0) if stage == "input" else _size(row["text"])
    if len(examples[reason]) < samples:
      examples[reason].append({"id": row["id"], "text": row["text"][:300]})
  return reasons, examples, size


def _output(out_dir: str, folder: str):
  rows = list(_jsonl(os.path.join(out_dir, "work", folder, "*.jsonl")))
  return rows, sum(_size(r["text"]) for r in rows)


def dedup_quality(universe: list[dict], removed_ids: set, kept_ids: set, truth_field: str) -> dict | None:
  """Precision and recall of document-level deduplication against planted truth.

  A document's group is the id it was copied from (its `truth_field`), else its own id. In a group of k
  documents that reached deduplication, k - 1 are duplicates: removing up to k - 1 of them is right, a
  removal beyond that (or from a group of one) is a false positive. A copy counts as found at its edit
  rate unless it was kept together with another member of its group.
  """
  meta = [(r["id"], r.get("metadata", {})) for r in universe]
  if not any(truth_field in m for _, m in meta):
    return None
  group = {doc_id: str(m.get(truth_field) or doc_id) for doc_id, m in meta}
  members = collections.defaultdict(list)
  for doc_id, g in group.items():
    members[g].append(doc_id)
  true_pos = removed = planted = 0
  for ids in members.values():
    r = sum(1 for i in ids if i in removed_ids)
    true_pos += min(r, len(ids) - 1)
    removed += r
    planted += len(ids) - 1
  by_rate = collections.defaultdict(list)
  for doc_id, m in meta:
    ids = members[group[doc_id]]
    if m.get(truth_field) and len(ids) > 1:
      found = doc_id not in kept_ids or not any(i in kept_ids for i in ids if i != doc_id)
      by_rate[float(m.get("edit_rate", 0.0))].append(found)
  return {"precision": true_pos / removed if removed else 1.0, "recall": true_pos / planted if planted else 1.0,
          "removed_as_duplicates": removed, "planted_duplicates": planted, "true_positives": true_pos,
          "recall_by_edit_rate": {f"{rate:g}": {"copies": len(v), "recall": float(np.mean(v))}
                                  for rate, v in sorted(by_rate.items())}}


def write(out_dir: str, config, specs: dict) -> dict:
  samples = config.evaluation.samples_per_rule
  counts = list(_input_counts(out_dir))
  docs_in = sum(c["documents"] for c in counts) + sum(sum(c["removed"].values()) for c in counts)
  after_docs, after_bytes = docs_in, sum(c["bytes"] for c in counts)
  table, stages, universe = [], {}, None
  for stage in STAGES:
    reasons, examples, removed_bytes = _removed(out_dir, stage, samples)
    status = _status(stage, config, specs)
    before_docs, before_bytes = after_docs, after_bytes
    if stage == "input":
      before_bytes, after_docs = after_bytes + removed_bytes, docs_in - sum(reasons.values())
    elif stage in OUTPUTS and (stage in ("learned", "clusters") or status.startswith("ran")):
      rows, after_bytes = _output(out_dir, OUTPUTS[stage])
      after_docs = len(rows)
      universe = rows if stage == "learned" else universe
    else:
      after_docs, after_bytes = after_docs - sum(reasons.values()), after_bytes - removed_bytes
    stages[stage] = {"status": status, "documents_in": before_docs, "documents_out": after_docs, "bytes_in": before_bytes,
                     "bytes_out": after_bytes, "removed_by_reason": dict(reasons), "samples": dict(examples)}
    table.append((stage, before_docs, after_docs, before_bytes, after_bytes))
  report = {"documents_in": docs_in, "documents_kept": after_docs, "bytes_kept": after_bytes, "stages": stages,
            "bad_input": _bad_input(counts, stages["input"]), "scorers": specs, "scores": _scores(out_dir, specs),
            "near_duplicates": _pairs(out_dir), "clusters": _clusters(out_dir)}
  if universe is not None and (config.dedup.exact or config.dedup.near.enabled):
    removed_ids = {r["id"] for s in ("exact", "near") for r in _jsonl(os.path.join(out_dir, "removed", s, "*.jsonl"))}
    last = "near" if config.dedup.near.enabled else "exact"
    kept_ids = {r["id"] for r in _output(out_dir, last)[0]}
    report["dedup_quality"] = dedup_quality(universe, removed_ids, kept_ids, config.evaluation.truth_field)
  manifest.write_json(os.path.join(out_dir, "report.json"), report)
  from yijax.curate import plots

  pngs = plots.write(out_dir, report, table)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(report, table, pngs))
  return report


def _status(stage: str, config, specs: dict) -> str:
  if stage == "langid":
    return "ran" if config.langid.model else "skipped: no language-id model (set --config.langid.model=lid.176.bin)"
  if stage == "learned":
    active = [n for n, s in specs.items() if "skipped" not in s]
    return "ran: " + ", ".join(active) if active else "skipped: " + "; ".join(f"{n}: {s['skipped']}" for n, s in specs.items())
  if stage == "heuristics":
    return "ran" if config.heuristics.enabled else "skipped: heuristics.enabled=False"
  if stage in ("near", "subdoc"):
    return "ran" if config.dedup[stage].enabled else f"skipped: dedup.{stage}.enabled=False"
  if stage == "exact":
    return "ran" if config.dedup.exact else "skipped: dedup.exact=False"
  if stage == "clusters":
    return "ran" if config.clusters.enabled else "skipped: clusters.enabled=False"
  return "ran"


def _input_counts(out_dir: str):
  for path in sorted(glob.glob(os.path.join(out_dir, "work", "input_counts", "*.json"))):
    yield manifest.read_json(path)


def _bad_input(counts: list[dict], input_stage: dict) -> dict:
  return {"removed_by_reason": input_stage["removed_by_reason"],
          "repaired_invalid_utf8_documents": sum(c["invalid_utf8_documents"] for c in counts),
          "blank_lines": sum(c["blank_lines"] for c in counts),
          "unreadable_files": [u for c in counts for u in c["unreadable_files"]]}


def _scores(out_dir: str, specs: dict) -> dict:
  values = collections.defaultdict(list)
  rows = list(_jsonl(os.path.join(out_dir, "work", "filtered", "*.jsonl")))
  rows += [{"metadata": r["metadata"]} for r in _jsonl(os.path.join(out_dir, "removed", "learned", "*.jsonl"))]
  for row in rows:
    for name, value in (row.get("metadata", {}).get("scores") or {}).items():
      if value is not None:
        values[name].append(value)
  out = {}
  for name, spec in specs.items():
    if "skipped" in spec:
      continue
    v = np.array(values.get(name, []), np.float64)
    threshold = spec.get("min_score", spec.get("max_score"))
    out[name] = {"threshold": threshold, "direction": "min" if "min_score" in spec else "max", "scored": int(len(v)),
                 "values": v.round(5).tolist()[:100_000],
                 "percentiles": {f"p{q}": float(np.percentile(v, q)) for q in (0, 10, 50, 90, 100)} if len(v) else {}}
  return out


def _pairs(out_dir: str) -> dict | None:
  path = os.path.join(out_dir, "work", "near_clusters", "pairs.npz")
  if not os.path.exists(path):
    return None
  with np.load(path) as data:
    jaccard = data["jaccard"]
    return {"candidate_pairs": int(data["candidates"]), "accepted_pairs": int(len(jaccard)),
            "accepted_jaccard_percentiles": {f"p{q}": float(np.percentile(jaccard, q)) for q in (0, 50, 100)}
            if len(jaccard) else {}}


def _clusters(out_dir: str) -> dict | None:
  path = os.path.join(out_dir, "work", "clusters", "clusters.json")
  return manifest.read_json(path) if os.path.exists(path) else None


def markdown(report: dict, table, pngs: list[str]) -> str:
  lines = ["# yijax curate report", "",
           f"{report['documents_in']:,} documents in, {report['documents_kept']:,} kept "
           f"({report['bytes_kept']:,} bytes).", "",
           "| stage | status | documents in | documents out | bytes in | bytes out | removed by reason |",
           "|---|---|---:|---:|---:|---:|---|"]
  for stage, d_in, d_out, b_in, b_out in table:
    entry = report["stages"][stage]
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(entry["removed_by_reason"].items())) or "-"
    lines.append(f"| {stage} | {entry['status']} | {d_in:,} | {d_out:,} | {b_in:,} | {b_out:,} | {reasons} |")
  bad = report["bad_input"]
  lines += ["", "## Bad input", "", f"removed: {bad['removed_by_reason'] or 'none'}; invalid UTF-8 repaired: "
            f"{bad['repaired_invalid_utf8_documents']}; blank lines: {bad['blank_lines']}; unreadable files: "
            f"{len(bad['unreadable_files'])}"]
  lines += [f"- {u['path']}: {u['error']}" for u in bad["unreadable_files"]]
  if report["scores"]:
    lines += ["", "## Learned scores", "", "| scorer | threshold | scored | p10 | p50 | p90 |", "|---|---|---:|---:|---:|---:|"]
    for name, s in report["scores"].items():
      p = s["percentiles"]
      lines.append(f"| {name} | {s['direction']} {s['threshold']:.4g} | {s['scored']:,} | {p.get('p10', float('nan')):.4g} | "
                   f"{p.get('p50', float('nan')):.4g} | {p.get('p90', float('nan')):.4g} |")
  near = report.get("near_duplicates")
  if near:
    lines += ["", f"MinHash LSH: {near['candidate_pairs']:,} candidate pairs, {near['accepted_pairs']:,} at or above "
              "the Jaccard threshold."]
  quality = report.get("dedup_quality")
  if quality:
    lines += ["", "## Deduplication against the planted truth", "",
              f"precision {quality['precision']:.4f}, recall {quality['recall']:.4f} "
              f"({quality['true_positives']} of {quality['removed_as_duplicates']} removals right; "
              f"{quality['planted_duplicates']} planted duplicates)", "", "| edit rate | copies | recall |", "|---:|---:|---:|"]
    lines += [f"| {rate} | {v['copies']} | {v['recall']:.3f} |" for rate, v in quality["recall_by_edit_rate"].items()]
  if report.get("clusters"):
    lines += ["", "## Clusters (drop with --config.clusters.drop=(ID,...))", "",
              "| id | documents | mean scores | frequent words | sample ids |", "|---:|---:|---|---|---|"]
    for c in report["clusters"]["clusters"]:
      scores = ", ".join(f"{k} {v:.3g}" for k, v in c["mean_scores"].items()) or "-"
      lines.append(f"| {c['cluster']} | {c['documents']} | {scores} | {' '.join(c['top_words'])} | "
                   f"{', '.join(map(str, c['sample_ids'][:3]))} |")
  lines += ["", "## Removed samples", ""]
  for stage, entry in report["stages"].items():
    for reason, examples in sorted(entry["samples"].items()):
      for ex in examples:
        snippet = " ".join(ex["text"].split())[:160].replace("|", "\\|")
        lines.append(f"- {stage} / {reason} / `{ex['id']}`: {snippet}")
  lines += [""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in pngs]
  return "\n".join(lines) + "\n"
