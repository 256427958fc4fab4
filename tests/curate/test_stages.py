"""Heuristic rules, language id, the learned scorers, clusters, the command line and the Slurm submission."""

import json
import os
import random
import stat

from yijax import cli
from yijax.curate import pipeline, planted


def _garbage(rng, words=120):
  return " ".join("".join(rng.choice("qxzjvkwy") for _ in range(rng.randint(3, 9))) for _ in range(words)) + "."


_GERMAN = ("der die das und nicht mit einem einer wurde haben werden zwischen heute morgen schnell langsam Haus "
           "Garten Stadt Wasser Strasse Fenster Lehrer Schule Bahnhof Wetter freundlich wichtig gemeinsam").split()


def _german(rng):
  lines = [" ".join(rng.choice(_GERMAN) for _ in range(14)).capitalize() + "." for _ in range(30)]
  return "\n".join(" ".join(lines[i:i + 2]) for i in range(0, 30, 2))


def _rows(folder):
  return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in open(path)]


def test_heuristics_langid_and_learned_scorers(tmp_path, config):
  import fasttext

  rng = random.Random(0)
  reference = [{"id": f"r{i}", "text": planted.original(rng)} for i in range(40)]
  planted.write(str(tmp_path / "reference.jsonl"), reference)
  docs = [{"id": f"good{i}", "text": planted.original(rng)} for i in range(20)]
  docs += [{"id": f"junk{i}", "text": planted.original(rng).replace("the ", "qzx ").replace("of ", "vvk ")} for i in range(6)]
  docs += [{"id": "short", "text": "Too short."}, {"id": "repeats", "text": "the same line again.\n" * 80},
           {"id": "de", "text": _german(rng)}, {"id": "garbled", "text": planted.original(rng).replace("e ", "Ã© ")}]
  planted.write(str(tmp_path / "in.jsonl"), docs)
  (tmp_path / "words.txt").write_text("# blocked\nnewsletter\n")
  docs.append({"id": "blocked", "text": planted.original(rng) + "\nJoin our newsletter today."})
  planted.write(str(tmp_path / "in.jsonl"), docs)
  # a language-id model in lid.176's format, trained here (lid.176.bin itself is given by path, never downloaded)
  lid_train = tmp_path / "lid.txt"
  lid_train.write_text("".join(f"__label__en {planted.original(rng).split(chr(10))[0]}\n"
                               f"__label__de {_german(rng).split(chr(10))[0]}\n" for _ in range(30)))
  fasttext.train_supervised(str(lid_train), epoch=5, dim=8, thread=1, seed=0, verbose=0).save_model(str(tmp_path / "lid.bin"))
  cfg = config(**{"langid.model": str(tmp_path / "lid.bin"), "langid.languages": ("en",), "langid.min_score": 0.5,
                  "learned.reference": str(tmp_path / "reference.jsonl"), "learned.perplexity.keep_fraction": 0.8,
                  "learned.classifier.keep_fraction": 0.8, "heuristics.word_blocklist": str(tmp_path / "words.txt"),
                  "heuristics.gopher.min_stop_words": None, "dedup.near.enabled": False, "dedup.subdoc.enabled": False})
  out = tmp_path / "out"
  report = pipeline.run([str(tmp_path / "in.jsonl")], str(out), cfg)
  stages = report["stages"]
  assert stages["heuristics"]["removed_by_reason"]["too_short"] == 1
  removed = {r["id"]: r for r in _rows(out / "removed" / "heuristics")}
  assert removed["repeats"]["stage"] == "heuristics" and removed["garbled"]["reason"] == "garbled"
  assert removed["blocked"]["reason"] == "blocked_words"
  assert {r["id"] for r in _rows(out / "removed" / "langid")} == {"de"}
  assert stages["learned"]["status"] == "ran: perplexity, classifier, coherence"
  learned = _rows(out / "removed" / "learned")
  assert sum(r["id"].startswith("junk") for r in learned) >= 4  # the off-distribution documents score worst
  for name in ("perplexity", "classifier"):
    assert report["scores"][name]["threshold"] is not None and report["scores"][name]["scored"] >= 20
  assert (out / "scores.png").exists() and "| classifier | min" in (out / "report.md").read_text()


def test_clusters_reported_and_dropped_by_id(tmp_path, config):
  rng = random.Random(3)
  code = "def function(argument):\n    return argument + 1  # the value is returned.\n"
  docs = [{"id": f"prose{i}", "text": planted.original(rng)} for i in range(8)]
  docs += [{"id": f"code{i}", "text": code * (10 + i)} for i in range(6)]
  planted.write(str(tmp_path / "in.jsonl"), docs)
  base = {"heuristics.enabled": False, "learned.coherence.enabled": False, "dedup.exact": False,
          "dedup.near.enabled": False, "dedup.subdoc.enabled": False, "clusters.enabled": True,
          "clusters.num_clusters": 2, "clusters.dim": 4}
  report = pipeline.run([str(tmp_path / "in.jsonl")], str(tmp_path / "a"), config(**base))
  clusters = report["clusters"]["clusters"]
  code_cluster = next(c["cluster"] for c in clusters if any(i.startswith("code") for i in c["sample_ids"]))
  assert sorted(c["documents"] for c in clusters) == [6, 8]
  again = pipeline.run([str(tmp_path / "in.jsonl")], str(tmp_path / "b"), config(**base, **{"clusters.drop": (code_cluster,)}))
  assert again["stages"]["clusters"]["removed_by_reason"] == {f"cluster:{code_cluster}": 6}
  assert {r["id"] for r in _rows(tmp_path / "b" / "kept")} == {f"prose{i}" for i in range(8)}


def test_command_line(tmp_path, capsys):
  planted.write(str(tmp_path / "in.jsonl"), planted.build(originals=10, seed=2))
  args = ["yijax", "curate", f"--input={tmp_path / 'in.jsonl'}", f"--out={tmp_path / 'out'}"]
  assert cli.main(args + ["--config.dedup.near.jacard=0.8"]) == 2
  assert "config.dedup.near.jaccard" in capsys.readouterr().err
  assert cli.main(args + ["--config.langid.model=/nonexistent/lid.176.bin"]) == 1
  assert "--config.langid.model=/nonexistent/lid.176.bin does not exist" in capsys.readouterr().err
  assert cli.main(args + ["--config.executor.workers=1", "--config.dedup.near.jaccard=0.8"]) == 0
  out = capsys.readouterr().out
  assert "dedup vs planted truth: precision 1.0000" in out and "skipped: no language-id model" in out
  assert json.loads((tmp_path / "out" / "report.json").read_text())["stages"]["langid"]["status"].startswith("skipped")


def test_slurm_submits_every_stage_as_a_dependent_job(tmp_path, config, monkeypatch):
  planted.write(str(tmp_path / "in.jsonl"), planted.build(originals=6, seed=4))
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  sbatch = bin_dir / "sbatch"  # records each submission; a real cluster runs the scripts
  sbatch.write_text("#!/bin/sh\nfor script; do :; done\nkind=stage; grep -q merge_stats \"$script\" && kind=merge\n"
                    f"echo \"$kind $*\" >> {tmp_path}/submitted\nn=$(wc -l < {tmp_path}/submitted)\n"
                    "echo \"Submitted batch job $((100 + n))\"\n")
  sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  cfg = config(**{"executor.kind": "slurm", "executor.slurm_partition": "cpu", "clusters.enabled": True})
  assert pipeline.run([str(tmp_path / "in.jsonl")], str(tmp_path / "out"), cfg) is None
  submitted = (tmp_path / "submitted").read_text().splitlines()
  stage_jobs = [line for line in submitted if line.startswith("stage ")]
  names = ["filter", "exact_signatures", "exact_find", "exact_filter", "near_signatures", "near_buckets", "near_clusters",
           "near_filter", "subdoc_signatures", "subdoc_find", "subdoc_filter", "clusters_fit", "kept", "report"]
  assert len(stage_jobs) == len(names)
  for name in names[1:]:
    script = (tmp_path / "out" / "logs" / name / "launch_script.slurm").read_text()
    assert f"#SBATCH --job-name=curate_{name}" in script and "#SBATCH --partition=cpu" in script
  assert all("--dependency=afterok:" in line for line in stage_jobs[1:])
