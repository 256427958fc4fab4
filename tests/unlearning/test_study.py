"""The unlearning study end to end at smoke scale (both settings, two seeds of the original and gold models,
three methods; colab/unlearning.ipynb runs it, the notebook's CI execution), and the paper plan."""

import json
import math
import os

import pytest

from yijax import cli, configlib
from yijax.studies import runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = f"{ROOT}/experiments/unlearning/config.py"
METHODS = ("ga", "ga_gd_in", "ga_kl_general")


def test_unlearning_notebook_runs_the_smoke_study(tmp_path, monkeypatch, prepared_data, capsys):
  from conftest import execute_notebook, notebook_images

  notebook = execute_notebook(os.path.join(ROOT, "colab", "unlearning.ipynb"), tmp_path, monkeypatch, prepared_data)
  assert notebook_images(notebook) >= 2
  workdir = tmp_path / "runs" / "colab-unlearning-smoke"
  assert {"paths_code.png", "paths_entity.png", "report.md", "results.json"} <= set(os.listdir(workdir))
  results = json.load(open(workdir / "results.json"))
  done = lambda stage: json.load(open(workdir / stage / "DONE.json"))["summary"]  # noqa: E731
  code_sets, ent_sets = done("code_data")["sets"], done("ent_data")["sets"]
  # gold models: the code gold never reads the forget modules; the entity gold's injection has no forget people
  assert code_sets["retrain"]["tokens"] == code_sets["pretrain"]["tokens"] - code_sets["forget"]["tokens"] > 0
  gold_config = json.load(open(workdir / "ent_gold" / "seed1" / "config.json"))
  original_config = json.load(open(workdir / "ent_original" / "seed1" / "config.json"))
  assert "forget" not in gold_config["data"]["sources"] and "forget" in original_config["data"]["sources"]
  assert gold_config["train"]["init_from"].endswith("ent_pretrain/seed1")  # paired seeds share a pretraining
  retain_tokens = [c["train"]["steps"] * c["data"]["sources"]["retain"] for c in (original_config, gold_config)]
  assert retain_tokens[0] == pytest.approx(retain_tokens[1], rel=0.1)  # the same retain tokens in both
  tasks = done("ent_data")["tasks"]
  assert tasks["forget_qa"]["items"] == 4 * 4 and tasks["retain_qa"]["items"] == 4 * 4
  for name, setting in results["settings"].items():
    sets = code_sets if name == "code" else ent_sets
    assert setting["seeds"] == 2 and set(setting["methods"]) == set(METHODS)
    for key, values in setting["gold"]["values"].items():
      assert len(values) == 2 and all(math.isfinite(v) for v in values)
    assert setting["checks"]["gold_passes"]  # the band test's construction: every gold seed passes
    for arm in setting["arms"].values():
      config = json.load(open(workdir / arm["name"] / "config.json"))
      rows = config["train"]["batch_size"] // (2 if config["data"]["chunked"]["paired_source"] else 1)
      per_epoch = -(-sets["forget"]["chunks"] // rows)  # every forget chunk, every epoch
      assert arm["steps"] == 2 * per_epoch and [p["step"] for p in arm["points"]] == [per_epoch, 2 * per_epoch]
      assert [p["epoch"] for p in arm["points"]] == [1, 2] and arm["final"] == arm["points"][-1]
      assert set(arm["final"]["within"]) == {m["key"] for m in setting["metrics"]}
      assert arm["retrain_over_unlearn_flops"] > 0
    ascent = setting["arms"][f"{'code' if name == 'code' else 'ent'}_ga_lr0"]["final"]["values"]
    assert ascent["forget_loss"] > setting["original"]["summary"]["forget_loss"]["mean"]  # ascent raised it
    closest = setting["methods"]["ga_gd_in"]["closest"]
    assert closest["distance"] == min(p["distance"] for a in setting["arms"].values()
                                      if a["method"] == "ga_gd_in" for p in a["points"])
  entity = results["settings"]["entity"]
  assert {"forget_qa", "retain_qa", "approximate_qa", "general_bpb", "mia_auc"} <= set(entity["gold"]["values"])
  report = open(workdir / "report.md").read()
  assert "### Setting: code" in report and "### Setting: entity" in report and "gold band" in report
  capsys.readouterr()
  assert cli.main(["yijax", "experiment", f"--config={CONFIG}:smoke", f"--workdir={workdir}"]) == 0
  assert "ran nothing" in capsys.readouterr().out  # every stage resumes as done


def test_paper_dry_run_plans_the_reference_recipe(tmp_path):
  study = configlib.load_config(f"{CONFIG}:paper")
  plan = runner.run_study(study, str(tmp_path), dry_run=True)["plan"]
  arms = [p for p in plan if p["kind"] == "train"]
  assert len(arms) == 7 and not (tmp_path / "data").exists()
  for arm in arms:
    assert arm["seq_len"] == 4096 and arm["batch_size"] == 680 and 6e9 < arm["model_params"] < 6.1e9
  study = configlib.load_config(f"{CONFIG}:paper", {"paths.model": "/models/yi"})
  run = study.stages.ga_kl_in_lr0.run
  assert run.train.reference_from == "/models/yi" and run.train.init_from == "/models/yi"
  assert (run.optimizer.schedule, run.optimizer.warmup_ratio, run.optimizer.weight_decay, run.optimizer.lr) == (
      "hf_cosine", 0.03, 0.0, 2e-5)
  assert run.data.chunked.paired_source == "retain" and run.data.chunked.factor == -1.0
  # every forget chunk (not a fixed count): one epoch, the steps counted from the data when the run starts
  assert run.data.chunked.num_chunks == 0 and run.data.chunked.epochs == 1.0 and run.train.steps == 0
  evaluate = study.stages.evaluate.args
  assert list(evaluate.sets.forget) == ["forget", 0]
  assert list(evaluate.sets.approximate) == ["approximate", 0]  # MIA: every forget chunk vs as many approximate


@pytest.mark.parametrize("scale", ["cpu", "gpu"], ids=["cpu_scale", "gpu_scale"])  # "gpu" alone marks a GPU test
def test_scales_resolve(scale):
  study = configlib.load_config(f"{CONFIG}:{scale}")
  arms = [n for n in study.stages if n.startswith(("code_", "ent_")) and n.rsplit("_", 1)[-1].startswith("lr")]
  assert len(arms) == 2 * 7 * 4
  assert {s for s in study.stages if study.stages[s].get("seeded")} == {
      "code_original", "code_gold", "ent_pretrain", "ent_original", "ent_gold"}
  assert study.study.seeds >= 2  # the gold band needs gold seeds
  assert study.stages.ent_gold.run.train.steps < study.stages.ent_original.run.train.steps
