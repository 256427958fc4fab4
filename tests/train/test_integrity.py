"""Checkpoints that cannot silently go bad: checksums of every stored array, resume that falls back to the
newest checkpoint that verifies (setting the damaged one aside), and loaders that name the damaged step."""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yijax import cli, sharding
from yijax.errors import CheckpointError
from yijax.train import integrity, loop, params_io

from test_loop import _config, _losses


def test_checksums_see_any_single_word_and_ignore_sharding():
  rng = np.random.default_rng(0)
  tree = {"w": rng.normal(size=(16, 8)).astype(np.float32), "b": rng.normal(size=(8,)).astype(jnp.bfloat16),
          "step": np.int32(7), "key": jax.random.key(3)}
  base = integrity.checksums(tree)
  assert set(base) == {"w", "b", "step", "key"}
  for flat_index in (0, 5, 127):  # one changed bit anywhere changes the checksum
    changed = dict(tree, w=tree["w"].copy())
    changed["w"].reshape(-1).view(np.uint32)[flat_index] ^= 1 << 13
    assert integrity.checksums(changed)["w"] != base["w"]
  swapped = dict(tree, w=tree["w"][::-1].copy())  # the same values in another order
  assert integrity.checksums(swapped)["w"] != base["w"]
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  sharded = jax.device_put(tree["w"], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "fsdp")))
  assert integrity.checksums({"w": sharded})["w"] == base["w"]
  with pytest.raises(CheckpointError, match="where: params w does not match the checksum"):
    integrity.verify(dict(tree, w=tree["w"] + 1), base, "where", "params")


def test_host_and_device_checksums_agree(monkeypatch):
  # small single-device trees are summed on the host (no compile), others on device: the same checksums
  rng = np.random.default_rng(1)
  tree = {"f32": rng.normal(size=(5, 7)).astype(np.float32), "bf16": jnp.asarray(rng.normal(size=(9,)), jnp.bfloat16),
          "i64": np.arange(12, dtype=np.int64).reshape(3, 4) * 977, "u8": rng.integers(0, 255, (6,), np.uint8),
          "bool": np.array([True, False, True]), "scalar": jnp.float32(2.5), "key": jax.random.key(5),
          "device": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)}
  host = integrity.checksums(tree)
  monkeypatch.setattr(integrity, "HOST_BYTES", -1)
  assert integrity.checksums(tree) == host


def _flip(path, count=4096):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    data = bytearray(f.read(count))
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in data))


def _largest(directory):
  files = [p for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True) if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


DAMAGE = {
    "flipped_params": lambda step: _flip(_largest(os.path.join(step, "params"))),
    "truncated_params": lambda step: open(_largest(os.path.join(step, "params")), "r+b").truncate(1000),
    "corrupt_meta": lambda step: open(os.path.join(step, "meta", "metadata"), "w").write('{"step": 6, "tok'),
    "corrupt_params_metadata": lambda step: open(os.path.join(step, "params", "_METADATA"), "w").write('{"tree'),
    "corrupt_data_state": lambda step: [open(p, "w").write('{"a": ') for p in glob.glob(os.path.join(step, "data",
                                                                                                    "*.json"))],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared_data):
  """An uninterrupted 9-step run and a 6-step one (checkpoints 3 and 6) to damage."""
  root = tmp_path_factory.mktemp("integrity")
  straight, six = root / "straight", root / "six"
  loop.train(_config(prepared_data, **{"train.steps": 9, "checkpoint.every_steps": 3}), str(straight))
  loop.train(_config(prepared_data, **{"train.steps": 9, "checkpoint.every_steps": 3, "train.stop_after": 6}),
             str(six))
  return straight, six


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_falls_back_past_a_damaged_checkpoint(damage, runs, tmp_path, prepared_data, capsys):
  straight, six = runs
  run = tmp_path / "run"
  shutil.copytree(six, run)
  DAMAGE[damage](str(run / "checkpoints" / "6"))
  result = loop.train(_config(prepared_data, **{"train.steps": 9, "checkpoint.every_steps": 3}), str(run))
  out = capsys.readouterr().out
  assert result["step"] == 9
  assert "skipping damaged checkpoint step 6:" in out and "resumed" in out and "at step 3" in out
  # kept aside, not deleted, with the reason; the loss log from step 3 on equals an uninterrupted run's
  aside = glob.glob(str(run / "damaged_checkpoints" / "6-*"))
  assert len(aside) == 1 and os.path.isdir(os.path.join(aside[0], "params"))
  assert "checkpoint" in open(os.path.join(aside[0], "DAMAGED.txt")).read()
  assert _losses(run) == _losses(straight)
  if damage.startswith("corrupt"):  # a file that does not parse is named
    assert "is not valid JSON" in out and ("metadata" in out or "_METADATA" in out or "data/" in out), out


def test_loaders_refuse_corrupted_weights_and_name_the_parameter(runs, tmp_path, capsys):
  _, six = runs
  run = tmp_path / "run"
  shutil.copytree(six, run)
  _flip(_largest(str(run / "checkpoints" / "6" / "params")))
  # the flip lands in stored data: a checksum mismatch, or a chunk that no longer decompresses
  with pytest.raises(CheckpointError, match=r"checkpoints/6(: parameter \S+ does not match the checksum|/params "
                                            r"cannot be read)"):
    params_io.load_model(str(run / "checkpoints" / "6"))
  # a run dir: the newest checkpoint that verifies, saying which it used
  config, params = params_io.load_model(str(run))
  err = capsys.readouterr().err
  assert "skipping damaged checkpoint step 6" in err and "using checkpoint step 3" in err
  _, good = params_io.load_model(str(six / "checkpoints" / "3"))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(good)))
  # the commands: one line naming the damaged checkpoint, exit status 1, no traceback
  for argv in (["generate", f"--ckpt={run}/checkpoints/6", "--prompt_ids=1,2", "--max_new_tokens=2"],
               ["convert", "yijax-to-hf", f"--ckpt={run}/checkpoints/6", f"--out={tmp_path}/hf"]):
    assert cli.main(["yijax", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoints/6" in err and "Traceback" not in err, err
  assert not os.path.exists(tmp_path / "hf")
  assert cli.main(["yijax", "eval", f"--run_dir={run}", "--tasks=arith", "--steps=6"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "checkpoints/6" in err[0], err
  assert cli.main(["yijax", "generate", f"--ckpt={run}", "--prompt_ids=1,2", "--max_new_tokens=2"]) == 0
  assert "using checkpoint step 3" in capsys.readouterr().err


def test_model_dirs_carry_checksums(tmp_path):
  from yijax import models
  from yijax.models import presets

  config = presets.get("tiny").replace(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16,
                                       mlp_dim=64, vocab_size=128)
  params = models.init_params(config, jax.random.key(0))
  params_io.save_model(str(tmp_path / "model"), params, config)
  sums = json.load(open(tmp_path / "model" / "checksums.json"))["params"]
  assert set(sums) == set(integrity.checksums(params))
  _flip(_largest(str(tmp_path / "model" / "params")), count=64)
  with pytest.raises(CheckpointError, match="does not match the checksum"):
    params_io.load_model(str(tmp_path / "model"))
