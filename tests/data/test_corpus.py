"""The embedded corpus (Python's docs and stdlib) and the raw-input readers."""

import json
import sys

import pytest

from yijax.data import corpus


def test_sources_splits_and_sizes():
  summary = corpus.summary()
  print(json.dumps(summary))  # the sizes the corpus docstring reports
  for source in corpus.SOURCES:
    ids = corpus.document_ids(source)
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    train = [d for d, _ in corpus.documents(source, "train")]
    validation = [d for d, _ in corpus.documents(source, "validation")]
    assert set(train).isdisjoint(validation) and sorted(train + validation) == ids
    assert 0 < len(validation) < 0.15 * len(ids)
    assert summary[source]["train"]["documents"] == len(train)
  assert summary["python_docs"]["train"]["documents"] > 50
  assert summary["python_code"]["train"]["bytes"] > 5_000_000


def test_code_skips_tests_and_the_docs_source():
  ids = corpus.document_ids("python_code")
  assert "asyncio/tasks.py" in ids and "os.py" in ids
  for doc_id in ids:
    parts = doc_id.split("/")
    assert not {"test", "tests", "site-packages", "idlelib", "lib2to3", "pydoc_data"} & set(parts[:-1])


def test_split_depends_only_on_the_id():
  assert corpus.split_of("x", 0.0) == "train"
  assert corpus.split_of("calls") == "validation" and corpus.split_of("assert") == "train"
  held_out = sum(corpus.split_of(f"doc{i}", 0.2) == "validation" for i in range(5000))
  assert abs(held_out / 5000 - 0.2) < 0.02
  with pytest.raises(ValueError, match="validation_fraction"):
    corpus.split_of("x", 1.5)


def test_fingerprint_is_stable_and_names_python():
  assert corpus.fingerprint() == corpus.fingerprint() != corpus.fingerprint(0.1)
  assert len(corpus.fingerprint()) == 64
  assert sys.version  # part of the hash: another interpreter gives another fingerprint


def test_write_jsonl(tmp_path):
  paths = corpus.write_jsonl(str(tmp_path), max_docs=3)
  assert set(paths) == {(s, p) for s in corpus.SOURCES for p in corpus.SPLITS}
  lines = [json.loads(x) for x in open(paths[("python_docs", "train")])]
  expected = list(corpus.documents("python_docs", "train"))[:3]
  assert [(x["id"], x["text"]) for x in lines] == expected
  before = (tmp_path / "python_docs.train.jsonl").stat().st_mtime_ns
  corpus.write_jsonl(str(tmp_path), max_docs=3)  # identical: not rewritten
  assert (tmp_path / "python_docs.train.jsonl").stat().st_mtime_ns == before
  with pytest.raises(ValueError, match="unknown embedded source"):
    list(corpus.documents("python_wiki"))


def test_sample_text_budget(tmp_path):
  size = corpus.sample_text(str(tmp_path / "s.txt"), 200_000)
  assert 100_000 < size <= 200_000 and (tmp_path / "s.txt").stat().st_size >= size


def test_jsonl_ranges_partition_the_lines(tmp_path):
  path = tmp_path / "x.jsonl"
  lines = [json.dumps({"text": "ä" * (i % 7) + str(i)}) + "\n" for i in range(50)]
  path.write_text("".join(lines), encoding="utf-8")
  size = path.stat().st_size
  for cut in (1, 7, 64, 333, size):
    got = []
    for start in range(0, size, cut):
      got += [line.decode() for _, line in corpus.jsonl_lines(str(path), start, min(start + cut, size))]
    assert got == lines


def test_readers_count_every_bad_input(tmp_path):
  (tmp_path / "bad.jsonl").write_bytes(
      b'{"text": "good one"}\n\n{"text": "bad \xff byte"}\nnot json\n{"other": 1}\n{"text": "  "}\n'
      b'{"text": "lone \\ud800 surrogate"}\n[1, 2]\n')
  (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
  counts = corpus.DocumentCounts()
  pieces = [[str(tmp_path / "bad.jsonl"), "jsonl", 0, 10_000], [str(tmp_path / "latin.txt"), "text", 0, 4],
            [str(tmp_path / "missing.txt"), "text", 0, 0]]
  texts = list(corpus.file_documents(pieces, "text", counts))
  assert texts == ["good one", "bad \ufffd byte", "lone ? surrogate", "caf\ufffd"]
  assert counts["blank_lines"] == 1 and counts["invalid_json_lines"] == 1
  assert counts["missing_text_field"] == 2 and counts["empty_documents"] == 1
  assert counts["invalid_utf8_documents"] == 3
  assert counts["unreadable_files"][0]["path"].endswith("missing.txt")
  assert "FileNotFoundError" in counts["unreadable_files"][0]["error"]
  assert len(counts["bad_line_examples"]) == 3
