"""The study runner: dependency order, skip-if-done, resume, failures, SIGKILL mid-study."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import ml_collections
import pytest

from yijax.models.config import ConfigError
from yijax.studies import runner

STUDY = textwrap.dedent('''
    import json, os
    import ml_collections
    from yijax import configlib
    from yijax.train.config import tiny_pretrain_config

    def _run(steps, init_from=""):
      config = tiny_pretrain_config()
      return configlib.apply_overrides(config, {
          "model.num_layers": 2, "model.hidden_size": 64, "model.num_heads": 4, "model.num_kv_heads": 2,
          "model.head_dim": 16, "model.mlp_dim": 128, "train.steps": steps, "train.batch_size": 8,
          "train.seq_len": 64, "train.progress_bar": False, "optimizer.warmup_steps": 1,
          "checkpoint.every_steps": 2, "eval.batches": 0, "data.prepared_dir": "PREPARED",
          "train.init_from": init_from})

    def report(args, stage_dir, context):
      losses = {}
      for stage in args.stages:
        with open(os.path.join(context.stage_dir(stage), "metrics.jsonl")) as f:
          losses[stage] = [json.loads(line)["loss"] for line in f]
      with open(os.path.join(context.workdir, "results.json"), "w") as f:
        json.dump(losses, f)
      return {"stages": len(losses)}

    def fail(args, stage_dir, context):
      raise ValueError("this stage always fails")

    def get_config(scale="smoke"):
      study = ml_collections.ConfigDict()
      study.stages = ml_collections.ConfigDict()
      study.stages.zz_base = {"kind": "train", "depends_on": [], "run": _run(4)}
      study.stages.continued = {"kind": "train", "depends_on": ["zz_base"],
                                "run": _run(12, "{stage:zz_base}")}
      study.stages.report = {"kind": "python", "depends_on": ["continued", "zz_base"], "fn": __file__ + ":report",
                             "args": {"stages": ["zz_base", "continued"]}}
      if scale == "failing":
        study.stages.broken = {"kind": "python", "depends_on": ["report"], "fn": __file__ + ":fail"}
      return study
''')


@pytest.fixture
def study_file(tmp_path, prepared_data):
  path = tmp_path / "study.py"
  path.write_text(STUDY.replace("PREPARED", prepared_data))
  return str(path)


def _command(study_file, workdir, scale="smoke"):
  return [sys.executable, "-m", "yijax.cli", "experiment", f"--config={study_file}:{scale}", f"--workdir={workdir}"]


def test_sigkill_in_the_second_stage_then_rerun_gives_the_same_results(tmp_path, study_file):
  straight = tmp_path / "straight"
  result = subprocess.run(_command(study_file, straight), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  # dependency order, not the ConfigDict's alphabetical one
  assert result.stdout.index("zz_base (train)") < result.stdout.index("continued (train)")

  killed = tmp_path / "killed"
  process = subprocess.Popen(_command(study_file, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = killed / "continued" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
    assert process.poll() is None, "the study ended before it could be killed"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert (killed / "zz_base" / "DONE.json").exists() and not (killed / "continued" / "DONE.json").exists()
  rerun = subprocess.run(_command(study_file, killed), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
  assert "zz_base: done earlier, skipped" in rerun.stdout
  assert "resumed" in rerun.stdout
  assert json.loads((killed / "results.json").read_text()) == json.loads((straight / "results.json").read_text())


def test_skip_change_refusal_failure_and_dry_run(tmp_path, study_file, capsys):
  from yijax import configlib

  study = configlib.load_config(f"{study_file}:smoke")
  workdir = tmp_path / "study"
  stdout = sys.stdout
  first = runner.run_study(study, str(workdir))
  assert first["ran"] == ["zz_base", "continued", "report"]
  # the stage log holds what the library logged during the stage, through a handler: stdout never swapped
  assert "initialized from" in (workdir / "continued" / "log.txt").read_text() and sys.stdout is stdout
  assert "initialized from" not in (workdir / "zz_base" / "log.txt").read_text()
  second = runner.run_study(configlib.load_config(f"{study_file}:smoke"), str(workdir))
  assert second["ran"] == [] and second["skipped"] == ["zz_base", "continued", "report"]
  changed = configlib.load_config(f"{study_file}:smoke", {"stages.zz_base.run.train.steps": 5})
  with pytest.raises(ConfigError, match="stage 'zz_base' finished earlier with another config"):
    runner.run_study(changed, str(workdir))
  failing = configlib.load_config(f"{study_file}:failing")
  with pytest.raises(runner.StageFailed, match=r"stage 'broken' failed: ValueError: this stage always fails") as e:
    runner.run_study(failing, str(workdir))
  log = str(e.value).split("log: ")[1]
  assert "this stage always fails" in open(log).read()
  assert not (workdir / "broken" / "DONE.json").exists()
  plan = runner.run_study(study, str(tmp_path / "plan"), dry_run=True)["plan"]
  assert [p["stage"] for p in plan] == ["zz_base", "continued", "report"]
  assert plan[1]["tokens"] == 12 * 8 * 64 and plan[1]["init_from"].endswith("/plan/zz_base")
  assert not (tmp_path / "plan").exists()


def test_graph_errors():
  study = ml_collections.ConfigDict({"stages": {"a": {"kind": "python", "depends_on": ["b"], "fn": "x:y"},
                                                "b": {"kind": "python", "depends_on": ["a"], "fn": "x:y"}}})
  with pytest.raises(ConfigError, match="cycle"):
    runner.check_graph(study)
  study.stages.b.depends_on = ["nope"]
  with pytest.raises(ConfigError, match="nope"):
    runner.check_graph(study)
  study.stages.b.depends_on = []
  study.stages.b.kind = "magic"
  with pytest.raises(ConfigError, match="kind='magic'"):
    runner.check_graph(study)


def test_repo_relative_function_references_resolve_from_any_directory(tmp_path, monkeypatch):
  from yijax.studies import stages

  monkeypatch.chdir(tmp_path)
  assert callable(stages.resolve_function("yijax/studies/moe.py:report"))
  with pytest.raises(ConfigError, match="nowhere.py does not exist"):
    stages.resolve_function("experiments/nowhere.py:analyze")


SEEDED = textwrap.dedent('''
    import json, os
    import ml_collections

    def base(args, stage_dir, context):
      value = 10 * context.seed + args.offset
      with open(os.path.join(stage_dir, "value.json"), "w") as f:
        json.dump(value, f)
      return {"value": value}

    def continued(args, stage_dir, context):
      # reads the same seed's base stage, through the substituted path and through the context
      assert args.base_dir == context.stage_dir("base"), (args.base_dir, context.stage_dir("base"))
      value = json.load(open(os.path.join(args.base_dir, "value.json"))) + 1
      return {"value": value}

    def report(args, stage_dir, context):
      values = [json.load(open(os.path.join(d, "value.json"))) for d in context.stage_dirs("base")]
      return {"base": values, "continued": [s["value"] for s in context.seed_summaries("continued")]}

    def get_config(scale="smoke"):
      config = ml_collections.ConfigDict()
      config.study = {"seeds": 2}
      config.stages = ml_collections.ConfigDict()
      config.stages.base = {"kind": "python", "seeded": True, "depends_on": [], "fn": __file__ + ":base",
                            "args": {"offset": 3}}
      config.stages.continued = {"kind": "python", "seeded": True, "depends_on": ["base"],
                                 "fn": __file__ + ":continued", "args": {"base_dir": "{stage:base}"}}
      config.stages.report = {"kind": "python", "depends_on": ["continued"], "fn": __file__ + ":report"}
      if scale == "bad":
        config.stages.report.args = {"dir": "{stage:base}"}
      return config
''')


def test_seeds_expand_stages_pair_them_and_grow(tmp_path):
  from yijax import configlib

  path = tmp_path / "seeded.py"
  path.write_text(SEEDED)
  study = configlib.load_config(f"{path}:smoke")
  workdir = tmp_path / "study"
  first = runner.run_study(study, str(workdir))
  # seed by seed: every stage's seed 0 before any seed 1; the unseeded report waits for all seeds
  assert first["ran"] == ["base/seed0", "continued/seed0", "base/seed1", "continued/seed1", "report"]
  assert (workdir / "base" / "seed1" / "value.json").read_text() == "13"
  assert first["summaries"]["report"] == {"base": [3, 13], "continued": [4, 14]}
  # more seeds: only the new seed runs, and the report reruns because its inputs changed
  grown = runner.run_study(configlib.load_config(f"{path}:smoke", {"study.seeds": 3}), str(workdir))
  assert grown["ran"] == ["base/seed2", "continued/seed2", "report"]
  assert grown["summaries"]["report"] == {"base": [3, 13, 23], "continued": [4, 14, 24]}
  assert set(json.loads((workdir / "run.json").read_text())["wall_seconds_by_stage"]) == set(
      grown["skipped"] + grown["ran"])
  with pytest.raises(ConfigError, match="seeded stage 'base' from a stage that is not seeded"):
    runner.run_study(configlib.load_config(f"{path}:bad"), str(tmp_path / "bad"))
  with pytest.raises(ConfigError, match="study.seeds=0 must be a positive integer"):
    runner.check_graph(configlib.load_config(f"{path}:smoke", {"study.seeds": 0}))


def test_seeded_train_stages_offset_the_seed_and_follow_their_own_seed(tmp_path, study_file):
  from yijax import configlib

  study = configlib.load_config(f"{study_file}:smoke")
  with study.unlocked():
    study.study = {"seeds": 3}
    study.stages.zz_base.seeded = True
    study.stages.continued.seeded = True
    study.stages.zz_base.run.train.seed = 5
  plan = {p["stage"]: p for p in runner.run_study(study, str(tmp_path / "plan"), dry_run=True)["plan"]}
  assert [plan[f"zz_base/seed{i}"]["seed"] for i in range(3)] == [5, 6, 7]
  assert plan["continued/seed2"]["init_from"].endswith("/plan/zz_base/seed2")
  assert plan["report"]["depends_on"] == ["continued/seed0", "continued/seed1", "continued/seed2", "zz_base/seed0",
                                          "zz_base/seed1", "zz_base/seed2"]


def test_a_preempted_train_stage_is_not_done_and_resumes(tmp_path, study_file, monkeypatch):
  """SIGTERM makes the loop save and return {"preempted": True}: the stage is not marked done, the study stops
  naming it, and the rerun trains it (the loop resumes from the saved step)."""
  from yijax import configlib
  from yijax.train import loop

  real, calls = loop.train, []

  def preempted(config, workdir, **kwargs):
    calls.append(workdir)
    return {"preempted": True, "step": 2}

  monkeypatch.setattr(loop, "train", preempted)
  workdir = tmp_path / "study"
  with pytest.raises(runner.StageFailed, match="'zz_base' was preempted .* at step 2 .* rerun"):
    runner.run_study(configlib.load_config(f"{study_file}:smoke"), str(workdir))
  assert len(calls) == 1 and not (workdir / "zz_base" / runner.DONE).exists()
  monkeypatch.setattr(loop, "train", real)
  result = runner.run_study(configlib.load_config(f"{study_file}:smoke"), str(workdir))
  assert result["ran"][0] == "zz_base" and (workdir / "zz_base" / runner.DONE).exists()
