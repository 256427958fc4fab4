"""Bad values are refused before anything runs, in one line that names the field or file, writing nothing;
a user error prints one line while a bug shows its traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from yijax import cli
from yijax.errors import ConfigError, YijaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = f"--config={ROOT}/configs/pretrain/tiny.py"


def _one_line(capsys, argv, *needles, status=1):
  assert cli.main(["yijax", *argv]) == status
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  for needle in needles:
    assert needle in err, err
  return err


@pytest.mark.parametrize("override, needle", [
    ("--config.optimizer.lr=-1", "optimizer.lr=-1.0 is negative"),
    ("--config.optimizer.lr=nan", "optimizer.lr=nan must be a finite number"),
    ("--config.optimizer.lr=inf", "optimizer.lr=inf must be a finite number"),
    ("--config.optimizer.b2=1.0", "optimizer.b2=1.0 must be in [0, 1)"),
    ("--config.optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1 must be >= 0"),
])
def test_optimizer_values_are_checked_and_nothing_is_written(override, needle, tmp_path, capsys, prepared_data):
  workdir = tmp_path / "run"
  _one_line(capsys, ["train", TINY, f"--workdir={workdir}", override, f"--config.data.prepared_dir={prepared_data}"],
            needle)
  assert not workdir.exists()


def test_workdir_and_out_that_are_files(tmp_path, capsys, prepared_data):
  afile = tmp_path / "afile"
  afile.write_text("mine")
  _one_line(capsys, ["train", TINY, f"--workdir={afile}", f"--config.data.prepared_dir={prepared_data}"],
            "--workdir=", "is a file")
  _one_line(capsys, ["prepare", "--source=x=" + str(afile), f"--tokenizer={prepared_data}/tokenizer",
                     f"--out={afile}"], "--out=", "is a file")
  assert afile.read_text() == "mine"


def test_a_tokenizer_that_is_not_sentencepiece(tmp_path, capsys):
  text = tmp_path / "notes.txt"
  text.write_text("hello\n")
  _one_line(capsys, ["prepare", f"--source=x={text}", f"--tokenizer={text}", f"--out={tmp_path / 'out'}"],
            f"{text} is not a sentencepiece model")
  assert not (tmp_path / "out").exists()


def test_prepared_data_with_missing_shards(tmp_path, capsys, prepared_data):
  data = tmp_path / "data"
  shutil.copytree(prepared_data, data)
  manifest = json.load(open(data / "manifest.json"))
  shard = manifest["splits"]["train"]["python_code"]["shards"][0]["path"]
  os.remove(data / shard)
  _one_line(capsys, ["train", TINY, f"--workdir={tmp_path / 'run'}", f"--config.data.prepared_dir={data}"],
            "shard file(s) that are missing", shard)
  assert not (tmp_path / "run").exists()


def test_vocab_smaller_than_the_default_datas_tokenizer_leaves_no_half_written_cache(tmp_path, capsys,
                                                                                      monkeypatch):
  monkeypatch.setenv("YIJAX_CACHE_DIR", str(tmp_path / "cache"))
  _one_line(capsys, ["train", TINY, f"--workdir={tmp_path / 'run'}", "--config.model.vocab_size=100"],
            "model.vocab_size=100", "Vocabulary size is smaller")
  assert [p for p in os.listdir(tmp_path / "cache") if not p.endswith(".lock")] == []
  assert not (tmp_path / "run").exists()


def test_generate_values_are_checked_before_loading(tmp_path, capsys, tiny_config):
  import jax

  from yijax import models
  from yijax.train import params_io

  model = tmp_path / "model"
  config = tiny_config.replace(max_seq_len=64)
  params_io.save_model(str(model), models.init_params(config, jax.random.key(0)), config)
  base = ["generate", f"--ckpt={model}", "--prompt_ids=1,2,3"]
  _one_line(capsys, base + ["--temperature=nan"], "--temperature must be a finite number")
  _one_line(capsys, base + ["--top_p=nan"], "--top_p must be in (0, 1]")
  _one_line(capsys, base + ["--max_new_tokens=62"], "3 tokens plus --max_new_tokens=62 exceeds", "max_seq_len=64")
  _one_line(capsys, base + ["--max_new_tokens=100000000"], "exceeds the model's max_seq_len=64")
  assert cli.main(["yijax", *base, "--max_new_tokens=61"]) == 0


def test_user_errors_are_one_line_and_bugs_show_their_traceback(monkeypatch, capsys):
  from yijax.commands import model_info

  def user_error(fv, args):
    raise ConfigError("model.num_heads=7 does not divide hidden_size=64; pick a divisor")

  monkeypatch.setattr(model_info, "run", user_error)
  _one_line(capsys, ["model-info", f"--config={ROOT}/configs/models/tiny.py"], "model.num_heads=7")

  def bug(fv, args):
    return {}["missing"]

  monkeypatch.setattr(model_info, "run", bug)
  with pytest.raises(KeyError):  # not swallowed into a one-line "error:" that hides where it came from
    cli.main(["yijax", "model-info", f"--config={ROOT}/configs/models/tiny.py"])

  def plain_value_error(fv, args):
    raise ValueError("a library bug")

  monkeypatch.setattr(model_info, "run", plain_value_error)
  with pytest.raises(ValueError, match="a library bug"):
    cli.main(["yijax", "model-info", f"--config={ROOT}/configs/models/tiny.py"])
  assert all(issubclass(e, YijaxError) for e in (ConfigError,))


def test_a_clean_error_exits_without_a_shutdown_traceback(tmp_path, prepared_data):
  """In a fresh process (atexit handlers, background threads): stderr holds the one line and nothing else."""
  result = subprocess.run(
      [sys.executable, "-m", "yijax.cli", "train", TINY, f"--workdir={tmp_path / 'run'}",
       "--config.optimizer.lr=-1", f"--config.data.prepared_dir={prepared_data}"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "yijax train: error: optimizer.lr=-1.0 is negative: that trains by gradient ascent; give a learning rate "
      ">= 0 (an unlearning objective sets its own sign: train.objective)"]
