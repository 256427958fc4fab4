"""`yijax prepare`: counts and manifest, bad input reported, resumable reruns, JSONL fields, local TFDS."""

import json
import os

import numpy as np
import pytest

from yijax import cli
from yijax.data import pipeline, prepare, records
from yijax.data.tokenizer import Tokenizer, train_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "token", "python", "def", "return", "class", "yield",
         "lambda", "import", "data", "shard", "record", "pack"]


def make_text(rng, words):
  return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), words)) + "."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  """A ~300-piece Yi-style tokenizer trained on a few KB of generated text."""
  directory = tmp_path_factory.mktemp("tok")
  rng = np.random.default_rng(0)
  corpus_file = directory / "train.txt"
  corpus_file.write_text("\n".join(make_text(rng, 12) for _ in range(400)) + "\n")
  return train_tokenizer([str(corpus_file)], 300, str(directory / "model"))


@pytest.fixture
def inputs(tmp_path):
  """Text files (one empty, one invalid UTF-8, one unreadable) and a JSONL with a custom field."""
  rng = np.random.default_rng(1)
  texts = tmp_path / "texts"
  texts.mkdir()
  good = [make_text(rng, 30 + 10 * i) for i in range(5)]
  for i, text in enumerate(good):
    (texts / f"doc{i}.txt").write_text(text)
  (texts / "empty.txt").write_text("")
  (texts / "latin1.txt").write_bytes("café déjà".encode("latin-1"))
  os.symlink(tmp_path / "nowhere", texts / "broken.txt")  # listed by the glob, unreadable
  rows = [{"content": make_text(rng, 20 + i), "id": i} for i in range(40)]
  lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps({"text": "wrong field"}), ""]
  (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
  return {"dir": tmp_path, "good": good, "rows": [r["content"] for r in rows]}


def specs_for(inputs):
  return [prepare.SourceSpec("files", "train", (str(inputs["dir"] / "texts" / "*.txt"),)),
          prepare.SourceSpec("rows", "train", (str(inputs["dir"] / "rows.jsonl"),), text_field="content")]


def decoded_documents(out, entry, tokenizer):
  docs = []
  for shard in entry["shards"]:
    path = os.path.join(out, shard["path"])
    tokens = records.read_shard(path)
    assert [len(t) for t in tokens] == records.read_lengths(path).tolist()
    docs += [tokenizer.decode(t) for t in tokens]
  return docs


def test_prepare_counts_and_reports_bad_input(tmp_path, inputs, tokenizer):
  out = str(tmp_path / "out")
  manifest = prepare.prepare(specs_for(inputs), tokenizer.path, out, num_workers=1, shard_bytes=600, progress=False)
  assert manifest["complete"] and manifest["format"] == prepare.FORMAT
  assert manifest["tokenizer"]["sha256"] == tokenizer.checksum and manifest["tokenizer"]["vocab_size"] == 300
  assert (manifest["tokenizer"]["bos_id"], manifest["tokenizer"]["eos_id"]) == (1, 2)
  files = manifest["splits"]["train"]["files"]
  assert files["documents"] == 6 and files["empty_documents"] == 1 and files["invalid_utf8_documents"] == 1
  assert [u["path"] for u in files["unreadable_files"]] == [str(inputs["dir"] / "texts" / "broken.txt")]
  assert "FileNotFoundError" in files["unreadable_files"][0]["error"]
  docs = decoded_documents(out, files, tokenizer)
  assert sorted(docs) == sorted(inputs["good"] + ["caf\ufffd d\ufffdj\ufffd"])
  rows = manifest["splits"]["train"]["rows"]
  assert rows["documents"] == 40 and rows["invalid_json_lines"] == 1 and rows["missing_text_field"] == 1
  assert rows["blank_lines"] == 1 and len(rows["shards"]) > 1  # 600-byte units split the JSONL by lines
  assert decoded_documents(out, rows, tokenizer) == inputs["rows"]
  assert rows["tokens"] == sum(len(tokenizer.encode(t)) for t in inputs["rows"])
  assert rows["shards"][0]["path"] == f"train/rows/shard-00000-of-{len(rows['shards']):05d}.array_record"
  # the pipeline reads it back: eval batches hold [bos] doc [eos] segments that decode to the inputs
  cfg = pipeline.default_data_config()
  cfg.prepared_dir, cfg.sources = out, {"rows": 1.0}
  segments = []
  for batch in pipeline.eval_batches(cfg, "train", 256, 2):
    for tokens, segs in zip(batch["tokens"], batch["segment_ids"]):
      segments += [tokens[segs == s] for s in range(1, segs.max() + 1)]
  joined = np.concatenate(segments)
  assert (joined == 1).sum() == 40 and (joined == 2).sum() == 40
  assert sorted(tokenizer.decode(d[1:-1]) for d in np.split(joined, np.nonzero(joined == 1)[0][1:])) == sorted(
      inputs["rows"])


def test_rerun_finishes_an_interrupted_job(tmp_path, inputs, tokenizer, monkeypatch):
  out = str(tmp_path / "out")
  real_run_unit = prepare.run_unit
  calls = []

  def failing(unit, *args, **kwargs):
    calls.append(unit["shard"])
    if unit["shard"].startswith("train/rows/shard-00001"):
      raise OSError("disk went away")
    return real_run_unit(unit, *args, **kwargs)

  monkeypatch.setattr(prepare, "run_unit", failing)
  manifest = prepare.prepare(specs_for(inputs), tokenizer.path, out, num_workers=1, shard_bytes=600, progress=False)
  rows = manifest["splits"]["train"]["rows"]
  assert not manifest["complete"] and not rows["complete"] and manifest["splits"]["train"]["files"]["complete"]
  failed = [s for s in calls if s.startswith("train/rows/shard-00001")]
  assert rows["failed_units"] == [{"shard": failed[0], "error": "OSError: disk went away"}]
  # a unit killed after writing part of its shard: temporary files only, no marker
  victim = os.path.join(out, rows["shards"][-1]["path"])
  os.remove(prepare.done_path(victim))
  with open(victim + ".tmp", "wb") as f:
    f.write(b"half a shard")
  with pytest.raises(pipeline.ConfigError, match="incomplete.*rerun"):
    pipeline.read_manifest(out, "train", ["rows"])
  markers = {p: os.stat(p).st_mtime_ns for p in _markers(out)}
  calls.clear()
  monkeypatch.setattr(prepare, "run_unit", real_run_unit)
  manifest = prepare.prepare(specs_for(inputs), tokenizer.path, out, num_workers=1, shard_bytes=600, progress=False)
  assert manifest["complete"] and manifest["last_run"]["units_run"] == 2
  assert manifest["last_run"]["units_skipped"] == len(markers)
  assert all(os.stat(p).st_mtime_ns == t for p, t in markers.items())  # finished units untouched
  assert manifest["splits"]["train"]["rows"]["documents"] == 40
  assert not [f for f in os.listdir(os.path.dirname(victim)) if f.endswith(".tmp")]
  with pytest.raises(ValueError, match="other inputs"):  # different inputs over finished shards
    prepare.prepare([prepare.SourceSpec("rows", "train", (str(inputs["dir"] / "texts" / "doc0.txt"),))],
                    tokenizer.path, out, num_workers=1, progress=False)


def _markers(out):
  return [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".done.json")]


def test_worker_processes_match_serial(tmp_path, inputs, tokenizer):
  serial = prepare.prepare(specs_for(inputs), tokenizer.path, str(tmp_path / "a"), num_workers=1,
                           shard_bytes=600, progress=False)
  parallel = prepare.prepare(specs_for(inputs), tokenizer.path, str(tmp_path / "b"), num_workers=2,
                             shard_bytes=600, progress=False)
  assert parallel["complete"] and parallel["last_run"]["num_workers"] == 2
  for name in ("files", "rows"):
    a, b = serial["splits"]["train"][name], parallel["splits"]["train"][name]
    assert a["shards"] == b["shards"]
    for shard in a["shards"]:
      left = records.read_shard(str(tmp_path / "a" / shard["path"]))
      right = records.read_shard(str(tmp_path / "b" / shard["path"]))
      assert [x.tolist() for x in left] == [x.tolist() for x in right]


def test_embedded_corpus(tmp_path, tokenizer):
  specs, fingerprint = prepare.embedded_specs(str(tmp_path), max_docs=4)
  manifest = prepare.prepare(specs, tokenizer.path, str(tmp_path), num_workers=1, progress=False,
                             corpus_fingerprint=fingerprint)
  assert manifest["complete"] and manifest["corpus_fingerprint"] == fingerprint
  for split in ("train", "validation"):
    assert set(manifest["splits"][split]) == {"python_docs", "python_code"}
    assert 0 < manifest["splits"][split]["python_docs"]["documents"] <= 4


def test_prepare_embedded_is_the_default_data(tmp_path):
  out = str(tmp_path / "embedded")
  manifest = prepare.prepare_embedded(out, 600, sample_mb=0.3, num_workers=2, progress=False)
  assert manifest["complete"] and manifest["tokenizer"]["vocab_size"] == 600
  assert manifest["splits"]["train"]["python_code"]["documents"] > 500
  again = prepare.prepare_embedded(out, 600, num_workers=2, progress=False)
  assert again["last_run"]["units_run"] == 0 and again["splits"] == manifest["splits"]
  with pytest.raises(ValueError, match="600-piece tokenizer, not 700"):
    prepare.prepare_embedded(out, 700, progress=False)
  cfg = pipeline.default_data_config()
  cfg.prepared_dir = out
  batch = next(pipeline.train_iterator(cfg, seq_len=256, batch_size=2, seed=0, process_index=0, process_count=1))
  assert batch["tokens"].shape == (2, 256) and batch["tokens"].max() < 600
  assert pipeline.available_sources(manifest, "validation") == ["python_code", "python_docs"]


class TinyText:
  """A local TFDS dataset in ArrayRecord format (built lazily: tfds is imported by the test)."""

  @staticmethod
  def build(data_dir, texts):
    import tensorflow_datasets as tfds

    class TinyTextDocs(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "id": np.int64}))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(texts), "validation": self._generate_examples(texts[:3])}

      def _generate_examples(self, items):
        for i, text in enumerate(items):
          yield i, {"text": text, "id": i}

    builder = TinyTextDocs(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return builder.name


def test_tfds_source_through_the_cli(tmp_path, tokenizer, capsys):
  rng = np.random.default_rng(2)
  texts = [make_text(rng, 10 + i) for i in range(12)] + [""]
  name = TinyText.build(tmp_path / "tfds", texts)
  out = tmp_path / "out"
  argv = ["yijax", "prepare", f"--source=web=tfds:{name}:train", f"--tfds_data_dir={tmp_path / 'tfds'}",
          f"--tokenizer={tokenizer.path}", f"--out={out}", "--num_workers=1", "--tfds_docs_per_shard=5"]
  assert cli.main(argv) == 0
  assert "1 empty documents" in capsys.readouterr().out
  web = json.loads((out / "manifest.json").read_text())["splits"]["train"]["web"]
  assert web["complete"] and web["documents"] == 12 and web["empty_documents"] == 1 and len(web["shards"]) == 3
  assert sorted(decoded_documents(str(out), web, tokenizer)) == sorted(texts[:12])
  assert cli.main(argv[:2] + [f"--source=web=tfds:{name}:validation", "--split=validation"] + argv[3:]) == 0
  assert cli.main(argv) == 0 and "0 units run, 3 already done" in capsys.readouterr().out
  assert cli.main(["yijax", "prepare", "--source=w=tfds:no_such_set:train", f"--tfds_data_dir={tmp_path}",
                   f"--tokenizer={tokenizer.path}", f"--out={out}"]) == 1
  assert "cannot open tfds:no_such_set:train" in capsys.readouterr().err


def test_cli_usage_errors(tmp_path, tokenizer, capsys):
  base = ["yijax", "prepare", f"--tokenizer={tokenizer.path}", f"--out={tmp_path}"]
  assert cli.main(base + ["--source=novalue"]) == 1
  assert "NAME=PATH_OR_GLOB" in capsys.readouterr().err
  assert cli.main(base + [f"--source=x={tmp_path}/missing.txt"]) == 1
  assert "no such file" in capsys.readouterr().err
  assert cli.main(base + [f"--source=x={tmp_path}/*.nothing"]) == 1
  assert "matched no files" in capsys.readouterr().err
  assert cli.main(base) == 1 and "--source" in capsys.readouterr().err
  assert cli.main(["yijax", "prepare", "--source=embedded", f"--out={tmp_path}"]) == 1
  assert "--tokenizer is required" in capsys.readouterr().err


def test_tokenizer_command(tmp_path, capsys):
  text = tmp_path / "t.txt"
  rng = np.random.default_rng(3)
  text.write_text("\n".join(make_text(rng, 10) for _ in range(200)))
  out = tmp_path / "tok"
  argv = ["yijax", "tokenizer", "train", f"--input={text}", f"--out={out}", "--embedded", "--embedded_mb=0.1"]
  assert cli.main(argv + ["--vocab_size=300"]) == 1  # the docs need more than 300 characters
  assert "Increase vocab_size" in capsys.readouterr().err
  assert cli.main(argv + ["--vocab_size=600"]) == 0
  assert "embedded corpus sample" in capsys.readouterr().out
  tokenizer = Tokenizer(str(out))
  assert tokenizer.vocab_size == 600 and tokenizer.decode(tokenizer.encode("def alpha():")) == "def alpha():"
  assert cli.main(["yijax", "tokenizer", "fit", "--vocab_size=300", f"--out={out}"]) == 1
  assert "yijax tokenizer {train | add-chat-tokens}" in capsys.readouterr().err
  assert cli.main(["yijax", "tokenizer", "train", "--vocab_size=300", f"--out={out}"]) == 1
  assert "--input" in capsys.readouterr().err
