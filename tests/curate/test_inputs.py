"""Bad input is counted and reported, never a crash midway; a killed run resumes without redoing finished tasks."""

import json
import os

import pytest

from yijax.curate import pipeline, planted


def _prose(seed):
  import random

  return planted.original(random.Random(seed))


def test_bad_input_is_counted_and_reported(tmp_path, config):
  data = tmp_path / "data"
  data.mkdir()
  (data / "good.txt").write_text(_prose(0))
  (data / "empty.txt").write_text("")
  (data / "binary.bin").write_bytes(b"\x7fELF\x00\x01\x02" + bytes(range(256)) * 8)
  (data / "latin1.txt").write_bytes(_prose(1).encode() + b"\n caf\xe9 \xff\xfe")
  lines = [json.dumps({"id": "ok", "text": _prose(2)}), "{not json", json.dumps({"id": "nofield", "body": "x"}),
           json.dumps({"id": "big", "text": "word " * 30_000}), "", json.dumps({"id": "blank", "text": "   "}),
           json.dumps({"text": _prose(3)}), '{"id": "surrogate", "text": "' + _prose(4).replace("\n", "\\n") + ' \\ud800"}']
  (data / "docs.jsonl").write_text("\n".join(lines) + "\n")
  cfg = config(**{"input.max_document_bytes": 20_000, "dedup.near.enabled": False, "dedup.subdoc.enabled": False,
                  "learned.coherence.enabled": False})
  report = pipeline.run([str(data)], str(tmp_path / "out"), cfg)
  bad = report["bad_input"]
  assert bad["removed_by_reason"] == {"empty": 2, "binary": 1, "invalid_json": 1, "missing_text_field:text": 1,
                                      "too_large": 1}
  assert bad["repaired_invalid_utf8_documents"] == 2 and bad["blank_lines"] == 1
  # nothing lost silently: every input document is kept or removed with a reason somewhere
  stages = report["stages"]
  assert report["documents_in"] == 11
  assert report["documents_in"] == report["documents_kept"] + sum(
      sum(s["removed_by_reason"].values()) for s in stages.values())
  kept = [json.loads(line) for path in (tmp_path / "out" / "kept").iterdir() for line in open(path)]
  ids = {k["id"] for k in kept}
  assert "ok" in ids and "surrogate" in ids and str(data / "good.txt") in ids
  assert any(i.startswith(str(data / "docs.jsonl") + "@") for i in ids)  # no `id` field: PATH@BYTE, stable
  removed = [json.loads(line) for path in (tmp_path / "out" / "removed" / "input").iterdir() for line in open(path)]
  assert {r["reason"] for r in removed} == set(bad["removed_by_reason"])
  assert "Bad input" in (tmp_path / "out" / "report.md").read_text()


def test_two_workers_and_resume_after_a_kill(tmp_path, config):
  for part in range(3):
    planted.write(str(tmp_path / f"part{part}.jsonl"), planted.build(originals=14, seed=part))
  cfg = config(**{"executor.workers": 2, "executor.start_method": "fork"})
  inputs = [str(tmp_path / "part*.jsonl")]
  out = tmp_path / "out"
  first = pipeline.run(inputs, str(out), cfg)
  assert len(json.loads((out / "plan.json").read_text())["units"]) == 3
  # a run killed during the last stages: task 1 of near_filter and kept never finished
  for stage in ("near_filter", "kept"):
    os.remove(out / "logs" / stage / "completions" / "00001")
  os.remove(out / "kept" / "00001.jsonl")
  done = out / "work" / "filtered" / "00000.jsonl"
  stamp = os.stat(done).st_mtime_ns
  second = pipeline.run(inputs, str(out), cfg)
  assert os.stat(done).st_mtime_ns == stamp  # finished tasks are not redone
  assert (out / "kept" / "00001.jsonl").exists()
  assert second["documents_kept"] == first["documents_kept"] and second["dedup_quality"] == first["dedup_quality"]
  with pytest.raises(Exception, match="other inputs or another config"):
    pipeline.run(inputs, str(out), config(**{"dedup.near.jaccard": 0.5}))
