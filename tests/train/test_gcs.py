"""gs:// run directories, against a local GCS emulator (no network, no credentials).

The emulator (gcp-storage-emulator) serves the JSON API that gcsfs (epath: config,
metrics, tokenizer, data-iterator states, orbax's small files) and tensorstore's
GCS driver (orbax's arrays) speak; their endpoints are pointed at it through
STORAGE_EMULATOR_HOST and TENSORSTORE_GCS_HTTP_URL. `_with_generations` adds
what the emulator leaves out and tensorstore's OCDBT manifests rely on (as real
GCS does): the x-goog-generation header on downloads and the ifGenerationMatch /
ifGenerationNotMatch preconditions. Without them about one save in 40 failed
("Malformed StorageGeneration": a read answered 200 with no generation where GCS
answers 304).
"""

import json
import os
import socket
import threading
from http import HTTPStatus

import numpy as np
import pytest

from test_loop import _config as loop_config
from yijax import paths
from yijax.train import checkpoint as ckpt_lib
from yijax.train import loop, params_io

pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("gcsfs")

BUCKET = "yijax-test"


def _with_generations(objects) -> None:
  """Object generations and their preconditions on the emulator's download and upload handlers."""
  if getattr(objects, "_yijax_generations", False):
    return
  download, media_upload, multipart_upload = objects.download, objects._media_upload, objects._multipart_upload
  lock = threading.Lock()

  def generation(request, storage, name):
    try:
      return int(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
    except objects.NotFound:
      return 0

  def wanted(request, key):
    value = request.query.get(key)
    return int(value[0]) if value else None

  def checked_download(request, response, storage, *args, **kwargs):
    current = generation(request, storage, request.params["object_id"])
    match, not_match = wanted(request, "ifGenerationMatch"), wanted(request, "ifGenerationNotMatch")
    if match is not None and match != current:
      response.status = HTTPStatus.PRECONDITION_FAILED
      return None
    if current and not_match == current:
      response.status = HTTPStatus.NOT_MODIFIED
      return None
    if current:
      response["x-goog-generation"] = str(current)
      response["x-goog-metageneration"] = "1"
    return download(request, response, storage, *args, **kwargs)

  def checked_upload(upload, name_of):
    def run(request, response, storage):
      with lock:  # compare and set
        match = wanted(request, "ifGenerationMatch")
        if match is not None and match != generation(request, storage, name_of(request)):
          response.status = HTTPStatus.PRECONDITION_FAILED
          return None
        return upload(request, response, storage)

    return run

  objects.download = checked_download
  objects._media_upload = checked_upload(media_upload, lambda r: r.query["name"][0])
  objects._multipart_upload = checked_upload(
      multipart_upload, lambda r: r.query["name"][0] if "name" in r.query else r.data["meta"].get("name"))
  objects._yijax_generations = True


@pytest.fixture(scope="module")
def gcs():
  from gcp_storage_emulator.handlers import objects
  from gcp_storage_emulator.server import create_server

  _with_generations(objects)

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("STORAGE_EMULATOR_HOST", url)
    mp.setenv("TENSORSTORE_GCS_HTTP_URL", url)
    mp.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "test")  # tensorstore: skip credential lookup
    mp.setenv("GOOGLE_CLOUD_PROJECT", "test")
    yield f"gs://{BUCKET}"
  server.stop()


def _config(prepared_data, **overrides):
  """test_loop's tiny run, saving asynchronously as real runs do."""
  return loop_config(prepared_data, **{"checkpoint.async_save": True, **overrides})


def _records(workdir):
  return [json.loads(line) for line in paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines()]


def test_a_gs_run_resumes_exactly_and_skips_an_unfinished_step(gcs, tmp_path, prepared_data):
  local = str(tmp_path / "local")
  loop.train(_config(prepared_data), local)
  straight = [(r["step"], r["loss"]) for r in _records(local)]

  run = f"{gcs}/runs/a"
  first = loop.train(_config(prepared_data, **{"train.stop_after": 4}), run + "/")
  assert first["step"] == 4
  checkpoints = paths.join(run, "checkpoints")
  assert ckpt_lib.complete_steps(checkpoints) == [2, 4]
  for name in ("config.json", "tokenizer.model", "metrics.jsonl"):
    assert paths.exists(paths.join(run, name)), name
  assert [r["step"] for r in _records(run)] == [1, 2, 3, 4]
  assert any(p.name.startswith("events.out.tfevents") for p in paths.path(paths.join(run, "tensorboard")).iterdir())

  # A save cut off before orbax marked it committed (GCS has no rename: the step dir exists without
  # commit_success.txt). The next run must resume from step 2, not read the half-written step 4.
  marker = paths.path(paths.join(checkpoints, "4", "commit_success.txt"))
  assert marker.exists()
  marker.unlink()
  assert ckpt_lib.latest_complete_step(checkpoints) == 2

  result = loop.train(_config(prepared_data), run)
  assert result["step"] == 6
  assert [(r["step"], r["loss"]) for r in _records(run)] == straight  # bit for bit, metrics truncated at 2
  assert ckpt_lib.complete_steps(checkpoints) == [2, 4, 6]  # step 4 saved again, committed this time

  # the run dir is a model for everything that loads one
  config, params = params_io.load_model(run)
  _, local_params = params_io.load_model(local)
  np.testing.assert_array_equal(np.asarray(params["embed"]["embedding"]),
                                np.asarray(local_params["embed"]["embedding"]))
  location = params_io.locate_model(run)
  assert location.params_dir == f"{run}/checkpoints/6/params" and location.tokenizer == f"{run}/tokenizer.model"
  from yijax.data.tokenizer import Tokenizer

  assert Tokenizer(location.tokenizer).encode("To be") == Tokenizer(os.path.join(local, "tokenizer.model")).encode("To be")
  state = ckpt_lib.read_data_state(run)
  assert state == ckpt_lib.read_data_state(local)

  from yijax import surgery  # a grown copy of the gs:// run, with its tokenizer and data-iterator state

  grown = str(tmp_path / "grown")
  surgery.grow_model_dir(run, grown, [0, 1, 1])
  assert ckpt_lib.read_data_state(grown) == state
  assert os.path.exists(os.path.join(grown, "tokenizer.model"))

  from yijax.convert import hf  # Hugging Face export straight from the bucket

  exported = hf.yijax_to_hf(run, str(tmp_path / "hf"))
  assert sorted(os.listdir(exported)) == ["config.json", "generation_config.json", "model.safetensors",
                                          "tokenizer.model"]

  # `yijax eval --run_dir` on the bucket: its results file lives there too, and a rerun repeats nothing
  from yijax import cli
  from yijax.eval import checkpoints

  argv = ["yijax", "eval", "checkpoints", f"--run_dir={run}", "--tasks=arith", "--batch_size=16"]
  assert cli.main(argv) == 0
  on_gs = checkpoints.load_results(paths.join(run, checkpoints.RESULTS))
  assert sorted({r["checkpoint"] for r in on_gs}) == ["2", "4", "6"]
  assert cli.main(argv) == 0 and checkpoints.load_results(paths.join(run, checkpoints.RESULTS)) == on_gs
  local_results = checkpoints.evaluate_checkpoints(local, ["arith"], steps=[6], options={"batch_size": 16})
  expected = {r["metric"]: r["value"] for r in checkpoints.load_results(local_results)}
  assert {r["metric"]: r["value"] for r in on_gs if r["checkpoint"] == "6"} == expected


def test_cli_trains_into_gs_and_refuses_other_schemes(gcs, prepared_data, capsys):
  from yijax import cli

  run = f"{gcs}/runs/cli"
  args = ["yijax", "train", "--config=configs/pretrain/tiny.py", f"--workdir={run}",
          "--config.model.num_layers=1", "--config.train.steps=2", "--config.train.batch_size=8",
          "--config.train.seq_len=32", "--config.optimizer.warmup_steps=1", "--config.train.progress_bar=False", "--config.eval.batches=0",
          f"--config.data.prepared_dir={prepared_data}"]
  here = os.getcwd()
  os.chdir(os.path.join(os.path.dirname(__file__), "..", ".."))
  try:
    assert cli.main(args) == 0
    assert ckpt_lib.latest_complete_step(paths.join(run, "checkpoints")) == 2
    assert cli.main(args[:3] + ["--workdir=s3://bucket/run"] + args[4:]) == 1
  finally:
    os.chdir(here)
  err = capsys.readouterr().err
  assert "--workdir=s3://bucket/run" in err and "gs://BUCKET/PATH" in err


def test_unsupported_locations_name_the_fix():
  with pytest.raises(paths.PathError, match="only local paths and gs://"):
    paths.resolve("hdfs://namenode/runs/x")
  with pytest.raises(paths.PathError, match="only local paths and gs://"):
    paths.resolve("gs://")
  assert paths.resolve("gs://b/runs/x/") == "gs://b/runs/x"
  assert paths.resolve("runs/x") == os.path.abspath("runs/x")


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MOE_ARMS = ("dense", "moe_aux_free")  # the other two arms differ only in router settings
MOE_STUDY = """
from yijax.studies import moe


def get_config(scale="smoke"):
  config = moe.get_config(scale)  # what experiments/moe/config.py returns
  with config.unlocked():
    for arm in ("moe_aux", "moe_no_aux"):
      del config.stages[arm]
    config.stages.report.depends_on = config.stages.report.args.arms = list(ARMS)
  return config
"""


def _moe_study_args(tmp_path, workdir, prepared_data):
  """`yijax experiment` on the moe study's smoke scale (two of its arms), at 1 step and 1 eval batch, on the
  session's data."""
  config = tmp_path / "moe_study.py"
  config.write_text(MOE_STUDY.replace("ARMS", repr(MOE_ARMS)))
  return (["yijax", "experiment", f"--config={config}:smoke", f"--workdir={workdir}", "--config.study.steps=1",
           "--config.study.eval_batches=1"]
          + [f"--config.stages.{arm}.run.data.prepared_dir={prepared_data}" for arm in MOE_ARMS])


@pytest.mark.slow
def test_a_study_on_gs_runs_resumes_and_publishes(gcs, tmp_path, prepared_data, capsys):
  """The moe study (smoke, shortened) with a gs:// study dir through the CLI: every stage's run dir,
  DONE.json and log on the bucket; a rerun skips every finished stage; a stage redone appends to its
  uploaded log; --results_dir copies the results into a local directory."""
  from yijax import cli

  study = f"{gcs}/studies/moe"
  args = _moe_study_args(tmp_path, study, prepared_data)
  assert cli.main(args + ["--dry_run"]) == 0
  plan = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [p["stage"] for p in plan] == [f"{arm}/seed0" for arm in sorted(MOE_ARMS)] + ["report"]
  assert not paths.exists(study)  # a dry run writes nothing

  assert cli.main(args) == 0
  stages = [f"{arm}/seed0" for arm in MOE_ARMS] + ["report"]
  done = {name: paths.read_text(paths.join(study, name, "DONE.json")) for name in stages}
  for arm in MOE_ARMS:
    run = paths.join(study, arm, "seed0")
    assert ckpt_lib.complete_steps(paths.join(run, "checkpoints")) == [1]
    assert [r["step"] for r in _records(run)] == [1]
    assert "=== " in paths.read_text(paths.join(run, "log.txt"))
  results = paths.read_json(paths.join(study, "results.json"))
  assert set(results["arms"]) == set(MOE_ARMS) and results["seeds"] == 1
  assert "`moe_aux_free_below_dense`" in paths.read_text(paths.join(study, "report.md"))
  record = paths.read_json(paths.join(study, "run.json"))
  assert set(record["wall_seconds_by_stage"]) == set(stages)
  assert paths.read_bytes(paths.join(study, "eval_loss_by_seed.png")).startswith(b"\x89PNG")

  # a rerun skips every finished stage; a stage without DONE.json is run again, its log continued
  report_log = paths.read_text(paths.join(study, "report", "log.txt"))
  assert report_log.count("=== ") == 1 and report_log.count("Mean ± standard error") == 1  # the report's table
  assert cli.main(args) == 0
  assert {name: paths.read_text(paths.join(study, name, "DONE.json")) for name in stages} == done
  paths.remove(paths.join(study, "report", "DONE.json"))
  published = tmp_path / "published"
  published.mkdir()
  (published / "stale.png").write_bytes(b"old")
  assert cli.main(args + [f"--results_dir={published}"]) == 0
  assert {n: paths.read_text(paths.join(study, n, "DONE.json")) for n in stages[:-1]} == {n: done[n] for n in stages[:-1]}
  report_log = paths.read_text(paths.join(study, "report", "log.txt"))
  assert report_log.count("=== ") == 2 and report_log.count("Mean ± standard error") == 2
  assert sorted(os.listdir(published)) == ["eval_loss_by_seed.png", "report.md", "results.json", "run.json"]
  assert json.loads((published / "results.json").read_text()) == results
  assert "[study] results -> " in capsys.readouterr().out


def test_study_dirs_name_the_fix_for_other_schemes_and_a_missing_gcsfs(monkeypatch, capsys):
  import importlib.util

  from yijax import cli

  args = ["yijax", "experiment", f"--config={os.path.join(ROOT, 'experiments', 'moe', 'config.py')}:smoke"]
  assert cli.main(args + ["--workdir=s3://bucket/study"]) == 1
  err = capsys.readouterr().err
  assert "--workdir=s3://bucket/study" in err and "gs://BUCKET/PATH" in err
  assert cli.main(args + ["--workdir=runs/x", "--results_dir=hdfs://namenode/results"]) == 1
  assert "--results_dir=hdfs://namenode/results" in capsys.readouterr().err

  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name in ("gcsfs", "tensorflow") else find_spec(name, *a))
  assert cli.main(args + ["--workdir=gs://bucket/study"]) == 1
  err = capsys.readouterr().err
  assert "--workdir=gs://bucket/study" in err and "pip install gcsfs" in err


def test_data_prepared_in_a_gs_stage_dir_is_read_through_a_local_copy(gcs, tmp_path, monkeypatch, prepared_data):
  """A data stage of a study on GCS builds its tokenizer and prepared data locally (common.local_stage_dir)
  and uploads them, the manifest naming the uploaded tokenizer; readers and runs use a cached local copy."""
  import shutil

  from yijax.data import chunked, pipeline, prepare
  from yijax.data.tokenizer import Tokenizer
  from yijax.studies import common

  monkeypatch.setenv("YIJAX_CACHE_DIR", str(tmp_path / "cache"))
  stage = f"{gcs}/studies/data/data"
  texts = {"train": [f"def f{i}(x):\n  return x + {i}\n" * (i + 3) for i in range(40)],
           "validation": [f"print({i})\n" * (i + 2) for i in range(8)]}
  with common.local_stage_dir(stage) as local:
    os.makedirs(os.path.join(local, "tokenizer"))
    shutil.copy(os.path.join(prepared_data, "tokenizer", "tokenizer.model"), os.path.join(local, "tokenizer"))
    tokenizer = Tokenizer(os.path.join(local, "tokenizer"))
    for split, docs in texts.items():
      prepare.write_token_source(os.path.join(local, "prepared"), split, "python_code", tokenizer.encode_batch(docs),
                                 dict(tokenizer.meta(), path=tokenizer.path))
  prepared = f"{stage}/prepared"
  assert paths.read_json(f"{prepared}/manifest.json")["tokenizer"]["path"] == f"{stage}/tokenizer/tokenizer.model"
  assert not os.path.exists(local)  # the staging directory is gone

  manifest = pipeline.read_manifest(prepared, "train", ["python_code"])
  assert manifest["root"].startswith(str(tmp_path / "cache")) and os.path.isdir(manifest["root"])
  chunks = chunked.load_chunks(prepared, "train", "python_code", 4096, add_bos=False, add_eos=False)
  assert [list(c) for c in chunks] == [list(ids) for ids in tokenizer.encode_batch(texts["train"])]

  run = f"{gcs}/runs/from_gs_data"
  result = loop.train(_config(prepared, **{"train.steps": 2, "data.sources": {"python_code": 1.0},
                                           "checkpoint.async_save": False}), run)
  assert result["step"] == 2 and np.isfinite(result["loss"])
  assert paths.read_bytes(f"{run}/tokenizer.model") == paths.read_bytes(f"{stage}/tokenizer/tokenizer.model")


def test_two_processes_write_one_gs_run(gcs, tmp_path, prepared_data):
  """The TPU-pod layout on CPU: 2 processes (jax.distributed, 4 devices each), one gs:// WORKDIR; every
  process writes its checkpoint shards and data state, process 0 the metrics; losses match one process."""
  import subprocess
  import sys

  from yijax import cli

  root = os.path.join(os.path.dirname(__file__), "..", "..")
  args = ["--config=configs/pretrain/tiny.py", "--config.model.num_layers=2", "--config.train.steps=3",
          "--config.optimizer.warmup_steps=1", "--config.train.batch_size=8", "--config.train.seq_len=64",
          "--config.train.progress_bar=False", "--config.checkpoint.every_steps=3", "--config.eval.batches=0",
          "--config.data.logical_shards=2", f"--config.data.prepared_dir={prepared_data}"]
  single = str(tmp_path / "single")
  here = os.getcwd()
  os.chdir(root)
  try:
    assert cli.main(["yijax", "train", f"--workdir={single}", *args]) == 0
  finally:
    os.chdir(here)

  run = f"{gcs}/runs/multi"
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  processes = [
      subprocess.Popen([sys.executable, "-m", "yijax.cli", "train", f"--workdir={run}", *args,
                        "--config.distributed.enabled=true",
                        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                        "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
                       cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)
  ]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  losses = [r["loss"] for r in _records(run)]
  expected = [r["loss"] for r in _records(single)]
  assert len(losses) == 3
  np.testing.assert_allclose(losses, expected, rtol=1e-5)
  step_dir = paths.join(run, "checkpoints", "3")
  assert ckpt_lib.complete_steps(paths.join(run, "checkpoints")) == [3]
  assert sorted(p.name for p in paths.path(paths.join(step_dir, "data")).iterdir()
                if p.name.startswith("process_")) == ["process_0-of-2.json", "process_1-of-2.json"]
