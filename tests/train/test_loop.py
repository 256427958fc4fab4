"""The training loop in-process: meshes, restore onto another mesh, shape errors,
keep policy, non-finite halting, continual pretraining, periodic evaluation."""

import json
import os

import jax
import numpy as np
import pytest

from yijax import configlib
from yijax.models.config import ConfigError
from yijax.train import loop, params_io
from yijax.train.config import tiny_pretrain_config
from yijax.train.params_io import CheckpointError


def _config(prepared_data, **overrides):
  config = tiny_pretrain_config()
  values = {
      "model.num_layers": 2, "model.hidden_size": 64, "model.num_heads": 4, "model.num_kv_heads": 2,
      "model.head_dim": 16, "model.mlp_dim": 128, "train.steps": 6, "train.batch_size": 8,
      "train.seq_len": 64, "train.progress_bar": False, "optimizer.warmup_steps": 2,
      "checkpoint.every_steps": 2, "checkpoint.async_save": False, "eval.batches": 0,
      "eval.every_steps": 0, "data.prepared_dir": prepared_data,
  }
  values.update(overrides)
  return configlib.apply_overrides(config, values)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


@pytest.mark.slow  # an end-to-end training (15-65 s on 2 cores): CI runs it, the inner loop does not
def test_restore_onto_another_mesh(tmp_path, prepared_data):
  """8-way data parallel for 4 steps, then fsdp=4 x tensor=2 for the rest: same losses."""
  straight = tmp_path / "straight"
  loop.train(_config(prepared_data), str(straight))
  moved = tmp_path / "moved"
  loop.train(_config(prepared_data, **{"train.stop_after": 4}), str(moved))
  result = loop.train(_config(prepared_data, **{"mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2}), str(moved))
  assert result["step"] == 6
  np.testing.assert_allclose(_losses(moved), _losses(straight), rtol=2e-5)
  _, params = params_io.load_model(str(moved))
  assert params["layers"]["mlp"]["up_proj"]["kernel"].shape == (2, 64, 128)


def test_checkpoint_that_does_not_match_the_config(tmp_path, prepared_data):
  workdir = tmp_path / "run"
  loop.train(_config(prepared_data, **{"train.steps": 2}), str(workdir))
  with pytest.raises(CheckpointError, match=r"mlp/down_proj/kernel has shape \(2, 128, 64\) but the config "
                                            r"gives \(2, 96, 64\); check model.mlp_dim"):
    loop.train(_config(prepared_data, **{"train.steps": 4, "model.mlp_dim": 96}), str(workdir))


@pytest.mark.slow  # an end-to-end training (15-65 s on 2 cores): CI runs it, the inner loop does not
def test_keep_policy_keeps_last_k_every_m_and_log_spaced(tmp_path, prepared_data):
  from yijax.train.checkpoint import log_spaced_steps

  workdir = tmp_path / "keep"
  loop.train(_config(prepared_data, **{"train.steps": 12, "checkpoint.every_steps": 1, "checkpoint.keep_last": 2,
                                       "checkpoint.keep_every": 5}), str(workdir))
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  assert steps == [5, 10, 11, 12]
  assert log_spaced_steps(1000, 4) == [1, 10, 100, 1000]
  logged = tmp_path / "log_spaced"
  loop.train(_config(prepared_data, **{"train.steps": 16, "checkpoint.every_steps": 100, "checkpoint.keep_last": 1,
                                       "checkpoint.keep_log_spaced": 5}), str(logged))
  steps = sorted(int(s) for s in os.listdir(logged / "checkpoints") if s.isdigit())
  assert steps == [1, 2, 4, 8, 16]


def nan_objective(config, params, batch, reference, options):
  """The language-model loss made NaN (a diverged step, without a config the run refuses)."""
  from yijax.train import objectives

  total, denominator, sums, aux = objectives.lm(config, params, batch, reference, options)
  return total * float("nan"), denominator, sums, aux


def test_non_finite_steps_halt_and_keep_the_last_good_checkpoint(tmp_path, prepared_data):
  workdir = tmp_path / "nan"
  loop.train(_config(prepared_data, **{"train.steps": 2}), str(workdir))
  with pytest.raises(loop.TrainingHalted, match="3 non-finite steps in a row at step 5"):
    loop.train(_config(prepared_data, **{"train.steps": 10, "train.objective": "test_loop:nan_objective",
                                         "train.max_nonfinite": 3}), str(workdir))
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  assert steps == [2, 4]  # step 4 was saved mid-streak: the skipped updates left step 2's parameters
  _, good = params_io.load_model(str(workdir / "checkpoints" / "2"))
  _, params = params_io.load_model(str(workdir))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(good)):
    np.testing.assert_array_equal(a, b)


def test_continual_pretraining_starts_from_given_params(tmp_path, prepared_data):
  base = tmp_path / "base"
  loop.train(_config(prepared_data, **{"train.steps": 4}), str(base))
  _, base_params = params_io.load_model(str(base))
  cont = tmp_path / "continued"
  config = _config(prepared_data, **{"train.steps": 1, "train.init_from": str(base), "optimizer.lr": 0.0,
                                     "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
                                     "optimizer.weight_decay": 0.0})
  loop.train(config, str(cont))
  _, params = params_io.load_model(str(cont))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(base_params)):
    np.testing.assert_array_equal(a, b)


def test_periodic_evaluation_and_run_dir_contents(tmp_path, prepared_data):
  workdir = tmp_path / "evals"
  seen, contexts = [], []

  def build(context):  # called once, with the run's context: a scorer on its mesh, its tokenizer
    contexts.append(context)
    return lambda params, step: seen.append(step) or {"custom": float(step)}

  result = loop.train(_config(prepared_data, **{"eval.batches": 2, "eval.every_steps": 2, "eval.steps": [1, 5]}),
                      str(workdir), evaluators=[build])
  records = [json.loads(line) for line in open(workdir / "eval.jsonl")]
  assert [r["step"] for r in records] == [1, 2, 4, 5, 6] and seen == [1, 2, 4, 5, 6]  # every 2, and eval.steps
  assert len(contexts) == 1 and contexts[0].scorer.mesh is not None and contexts[0].total_steps == 6
  assert contexts[0].tokenizer.vocab_size > 0
  assert all(r["bits_per_byte"] > 0 and r["perplexity"] > 1 for r in records)
  assert result["eval/custom"] == 6.0
  assert any(name.startswith("events") for name in os.listdir(workdir / "tensorboard"))
  saved = json.load(open(workdir / "config.json"))
  assert saved["train"]["steps"] == 6 and saved["data"]["prepared_dir"] == prepared_data
  assert (workdir / "tokenizer.model").exists()


@pytest.mark.parametrize("override,message", [
    ({"train.seq_len": 2048}, r"train.seq_len=2048 exceeds model.max_seq_len=1024"),
    ({"eval.steps": [0, 3]}, r"eval.steps=\[0, 3\] has \[0\]: each must be a step in 1..train.steps"),
    ({"train.batch_size": 12}, r"cannot be split over the 8 batch shards"),
    ({"mesh.data": 3}, r"mesh .* has 3 devices but 8 are present"),
    ({"model.num_kv_heads": 3}, r"model.num_heads=4 is not divisible by model.num_kv_heads=3"),
    ({"model.vocab_size": 1000}, r"4096 .*model.vocab_size=1000|model.vocab_size=1000.*4096"),
    ({"data.sources": {"nope": 1.0}}, r"nope"),
])
def test_bad_configs_fail_before_compiling(tmp_path, prepared_data, override, message):
  with pytest.raises(ConfigError, match=message):
    loop.train(_config(prepared_data, **override), str(tmp_path / "bad"))
  assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.slow  # an end-to-end training (15-65 s on 2 cores): CI runs it, the inner loop does not
def test_moe_trains_resumes_exactly_and_balances(tmp_path, prepared_data):
  moe = {"model.num_experts": 8, "model.num_experts_per_token": 2, "model.expert_mlp_dim": 32,
         "model.num_shared_experts": 1, "model.shared_expert_mlp_dim": 32, "model.first_dense_layers": 1,
         "model.router_type": "sigmoid", "model.router_bias_update_rate": 0.01, "model.aux_loss_coef": 0.01,
         "model.router_z_loss_coef": 0.001}
  straight = tmp_path / "straight"
  loop.train(_config(prepared_data, **moe), str(straight))
  resumed = tmp_path / "resumed"
  loop.train(_config(prepared_data, **moe, **{"train.stop_after": 3}), str(resumed))
  loop.train(_config(prepared_data, **moe), str(resumed))
  assert _losses(resumed) == _losses(straight)
  record = json.loads(open(straight / "metrics.jsonl").readlines()[-1])
  assert record["aux/load_balance"] > 0 and record["aux/router_z"] > 0
  assert record["moe/load_max_over_mean/0"] >= 1.0
  _, params = params_io.load_model(str(straight))
  bias = np.asarray(params["moe_layers"]["mlp"]["selection_bias"])
  assert bias.shape == (1, 8) and np.abs(bias).max() > 0  # aux-loss-free balancing moved it
  np.testing.assert_allclose(np.abs(bias), 0.01 * np.round(np.abs(bias) / 0.01), atol=1e-6)


@pytest.mark.slow  # an end-to-end training (15-65 s on 2 cores): CI runs it, the inner loop does not
def test_frozen_layers_stay_put_and_relative_updates_are_logged(tmp_path, prepared_data):
  base = tmp_path / "base"
  loop.train(_config(prepared_data, **{"train.steps": 2}), str(base))
  _, start = params_io.load_model(str(base))
  run = tmp_path / "frozen"
  loop.train(_config(prepared_data, **{"train.init_from": str(base), "optimizer.freeze_layers": [0],
                                       "eval.batches": 1, "eval.every_steps": 3, "eval.relative_update_k": 1,
                                       "train.steps": 6}), str(run))
  _, params = params_io.load_model(str(run))
  for name, leaf in jax.tree_util.tree_flatten_with_path(params["layers"])[0]:
    before = jax.tree_util.tree_flatten_with_path(start["layers"])[0]
    ref = dict((jax.tree_util.keystr(p), v) for p, v in before)[jax.tree_util.keystr(name)]
    np.testing.assert_array_equal(leaf[0], ref[0])  # layer 0 frozen
    assert not np.array_equal(leaf[1], ref[1])      # layer 1 trained
  records = [json.loads(line) for line in open(run / "eval.jsonl")]
  assert [r["step"] for r in records] == [3, 6]
  assert records[-1]["relative_update/all/0"] == 0.0 and records[-1]["relative_update/all/1"] > 0
  assert records[-1]["relative_update/bottom_over_top"] == 0.0
  assert records[0]["relative_update/attention/1"] < records[1]["relative_update/attention/1"]


def test_batch_grows_when_the_held_out_loss_stalls(tmp_path, prepared_data):
  run = tmp_path / "growth"
  loop.train(_config(prepared_data, **{"train.steps": 8, "eval.batches": 1, "eval.every_steps": 2,
                                       "train.batch_growth.factor": 2, "train.batch_growth.patience": 1,
                                       "train.batch_growth.min_delta": 100.0}), str(run))
  sizes = [json.loads(line)["batch_size"] for line in open(run / "metrics.jsonl")]
  # evals at 2, 4, 6: the first sets the best loss, then every stall doubles the batch
  assert sizes == [8, 8, 8, 8, 16, 16, 32, 32]


def test_a_token_budget_ends_the_run_that_batch_growth_would_stretch(tmp_path, prepared_data):
  """train.max_tokens: the run ends (final evaluation, checkpoint) after the step that reaches the budget, before
  train.steps when the batch has grown; resumed, it is finished."""
  run = tmp_path / "budget"
  overrides = {"train.steps": 12, "eval.batches": 1, "eval.every_steps": 2, "train.batch_growth.factor": 2,
               "train.batch_growth.patience": 1, "train.batch_growth.min_delta": 100.0}
  first = loop.train(_config(prepared_data, **overrides), str(tmp_path / "unbounded"))
  budget = first["tokens_seen"] // 2
  result = loop.train(_config(prepared_data, **overrides, **{"train.max_tokens": budget}), str(run))
  rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
  assert rows[-1]["tokens_seen"] >= budget > rows[-2]["tokens_seen"] and result["step"] == rows[-1]["step"] < 12
  assert json.loads(open(run / "eval.jsonl").readlines()[-1])["step"] == result["step"]
  assert (run / "checkpoints" / str(result["step"])).is_dir()
  again = loop.train(_config(prepared_data, **overrides, **{"train.max_tokens": budget}), str(run))
  assert again["step"] == result["step"] and len(open(run / "metrics.jsonl").readlines()) == len(rows)


def test_a_fresh_run_continues_another_runs_data_stream(tmp_path, prepared_data):
  """init_from + init_data_state_from a step-4 checkpoint, LR 0: step 1 sees the straight run's batch 5."""
  straight = tmp_path / "straight"
  loop.train(_config(prepared_data, **{"train.stop_after": 4}), str(straight))
  loop.train(_config(prepared_data), str(straight))
  step_4 = str(straight / "checkpoints" / "4")
  config = _config(prepared_data, **{"train.steps": 1, "train.init_from": step_4, "train.init_data_state_from": step_4,
                                     "optimizer.lr": 0.0, "optimizer.schedule": "constant",
                                     "optimizer.warmup_steps": 0})
  loop.train(config, str(tmp_path / "continued"))
  records = [json.loads(line) for line in open(straight / "metrics.jsonl")]
  first = json.loads(open(tmp_path / "continued" / "metrics.jsonl").readline())
  assert first["loss"] == pytest.approx(records[4]["loss"], rel=1e-6)
  assert first["tokens_seen"] == records[4]["tokens_seen"] - records[3]["tokens_seen"]
  with pytest.raises(CheckpointError, match="no data-iterator state for process 0 of 1"):
    from yijax.train import checkpoint

    params_io.save_model(str(tmp_path / "bare"), *reversed(params_io.load_model(step_4)))
    checkpoint.read_data_state(str(tmp_path / "bare"))


def test_batch_growth_on_the_smoothed_loss():
  import ml_collections

  def sizes_after(losses, ema):
    config = ml_collections.ConfigDict({"train": {"batch_size": 8, "batch_growth": {
        "factor": 2, "patience": 2, "min_delta": 0.01, "max_batch_size": 32, "ema": ema}}})
    growth, sizes = loop.BatchGrowth(config, {}), []
    for loss in losses:
      growth.observe(loss)
      sizes.append(growth.accumulate * 8)
    return sizes

  # a falling loss with noise, then a plateau: every pair of noisy evaluations grows the raw
  # rule's batch; the smoothed one (ema 0.5) grows only on the plateau
  losses = [5.0, 4.6, 4.7, 4.65, 4.2, 4.3, 4.25] + [3.9] * 8
  assert sizes_after(losses, 0.0) == [8, 8, 8, 16, 16, 16] + [32] * 9
  assert sizes_after(losses, 0.5) == [8] * 13 + [16, 16]


@pytest.mark.slow  # an end-to-end training (15-65 s on 2 cores): CI runs it, the inner loop does not
def test_several_steps_per_call_match_step_by_step(tmp_path, prepared_data):
  # k steps per compiled call (a scan over k batches) is the same training: the same data, losses and
  # parameters, evaluations and checkpoints on the same steps; a resumed run (stop_after) continues it exactly
  overrides = {"train.steps": 8, "checkpoint.every_steps": 4, "eval.batches": 1, "eval.every_steps": 4,
               "checkpoint.keep_last": 10, "checkpoint.keep_log_spaced": 0}
  one = loop.train(_config(prepared_data, **overrides), str(tmp_path / "one"))
  four = loop.train(_config(prepared_data, **overrides, **{"train.steps_per_call": 4}), str(tmp_path / "four"))
  np.testing.assert_allclose(_losses(tmp_path / "four"), _losses(tmp_path / "one"), rtol=2e-5)
  assert len(_losses(tmp_path / "four")) == 8
  evals = lambda d: [json.loads(line)["step"] for line in open(d / "eval.jsonl")]
  assert evals(tmp_path / "four") == evals(tmp_path / "one") == [4, 8]
  saved = lambda d: sorted(int(n) for n in os.listdir(d / "checkpoints") if n.isdigit())
  assert saved(tmp_path / "four") == saved(tmp_path / "one") == [4, 8]
  np.testing.assert_allclose(four["eval/loss"], one["eval/loss"], rtol=2e-5)
  # interrupted after 6 steps (a call of 4, then of 2) and resumed (a call of 2): the same run
  resumed = tmp_path / "resumed"
  loop.train(_config(prepared_data, **overrides, **{"train.steps_per_call": 4, "train.stop_after": 6}), str(resumed))
  loop.train(_config(prepared_data, **overrides, **{"train.steps_per_call": 4}), str(resumed))
  np.testing.assert_allclose(_losses(resumed)[-2:], _losses(tmp_path / "one")[-2:], rtol=2e-5)
  _, a = params_io.load_model(str(tmp_path / "one"))
  _, b = params_io.load_model(str(resumed))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_validation_prepares_nothing_and_changes_nothing(tmp_path, monkeypatch, prepared_data):
  from yijax.train import validation

  monkeypatch.setenv("YIJAX_CACHE_DIR", str(tmp_path / "cache"))
  config = _config("")  # no data given: the run would prepare the embedded corpus
  before = config.to_json()
  plan = validation.check_run_config(config)
  assert config.to_json() == before and plan.data is None and not (tmp_path / "cache").exists()
  given = _config(prepared_data)
  plan = validation.resolve_data(given, validation.check_run_config(given))
  assert plan.data.prepared_dir == prepared_data and plan.data is not given.data and plan.token_bytes is not None
  assert given.to_json() == _config(prepared_data).to_json()
