"""Deduplication against planted truth: exact and near copies at known edit rates; sub-document spans."""

import json
import os

from yijax.curate import pipeline, planted


def test_planted_duplicates_precision_and_recall(tmp_path, config):
  docs = planted.build(originals=60, seed=0)
  planted.write(str(tmp_path / "planted.jsonl"), docs)
  report = pipeline.run([str(tmp_path / "planted.jsonl")], str(tmp_path / "out"), config())
  quality = report["dedup_quality"]
  by_rate = {rate: v["recall"] for rate, v in quality["recall_by_edit_rate"].items()}
  # every removal is a planted duplicate (no distinct document merged), and the close copies are all found
  assert quality["precision"] == 1.0 and quality["true_positives"] == quality["removed_as_duplicates"] > 0
  assert by_rate["0"] == by_rate["0.01"] == 1.0
  # 5-word-shingle Jaccard at 10% edits is ~0.4, at 30% ~0.1: below the 0.7 threshold, so never merged
  assert by_rate["0.1"] == by_rate["0.2"] == by_rate["0.3"] == 0.0
  assert quality["planted_duplicates"] == sum("dup_of" in d for d in docs)
  md = (tmp_path / "out" / "report.md").read_text()
  assert f"precision {quality['precision']:.4f}" in md and "| 0.01 |" in md
  assert (tmp_path / "out" / "dedup_recall.png").exists() and (tmp_path / "out" / "waterfall.png").exists()
  # kept shards: {"id", "text"} with the input's own ids, readable by `yijax prepare` (JSONL by suffix)
  kept = [json.loads(line) for name in sorted(os.listdir(tmp_path / "out" / "kept"))
          for line in open(tmp_path / "out" / "kept" / name)]
  assert all(set(k) == {"id", "text"} and name.endswith(".jsonl") for k in kept
             for name in os.listdir(tmp_path / "out" / "kept"))
  assert len(kept) == report["documents_kept"] == len(docs) - quality["removed_as_duplicates"]
  assert {k["id"] for k in kept} <= {d["id"] for d in docs}
  removed = [json.loads(line) for line in open(tmp_path / "out" / "removed" / "exact" / "exact_duplicate.00000.jsonl")]
  assert removed and all(r["reason"] == "exact_duplicate" and r["stage"] == "exact" for r in removed)


def test_subdocument_spans_removed_across_documents(tmp_path, config):
  import random

  rng = random.Random(1)
  boiler = "Subscribe to our newsletter for weekly updates.\nAll rights reserved by the publisher of this site.\n" \
           "Contact the editors with questions about this story."
  docs = []
  for i in range(6):
    body = planted.original(rng)
    docs.append({"id": f"d{i}", "text": body + "\n" + boiler if i % 2 == 0 else body})
  planted.write(str(tmp_path / "in.jsonl"), docs)
  cfg = config(**{"dedup.near.enabled": False, "learned.coherence.enabled": False})
  report = pipeline.run([str(tmp_path / "in.jsonl")], str(tmp_path / "out"), cfg)
  kept = {json.loads(line)["id"]: json.loads(line)["text"] for line in open(tmp_path / "out" / "kept" / "00000.jsonl")}
  assert len(kept) == 6  # spans removed, documents kept
  assert sum("Subscribe to our newsletter" in t for t in kept.values()) == 1
  assert report["stages"]["subdoc"]["bytes_out"] < report["stages"]["subdoc"]["bytes_in"]
