"""The `yijax` console script: commands, help, errors, the round-trip demo."""

import json
import subprocess


from yijax import cli


def test_help_lists_commands(capsys):
  assert cli.main(["yijax", "--help"]) == 0
  out = capsys.readouterr().out
  for name in ("model-info", "convert", "generate"):
    assert name in out


def test_console_script_is_installed():
  result = subprocess.run(["yijax", "--help"], capture_output=True, text=True)
  assert result.returncode == 0 and "model-info" in result.stdout


def test_model_info_yi_6b(capsys):
  assert cli.main(["yijax", "model-info", "--config=configs/models/yi_6b.py"]) == 0
  out = capsys.readouterr().out
  assert "6,061,035,520" in out and "(6.06B)" in out


def test_model_info_yi_34b(capsys):
  assert cli.main(["yijax", "model-info", "--config=configs/models/yi_34b.py"]) == 0
  assert "(34.39B)" in capsys.readouterr().out


def test_unknown_override_names_closest_key(capsys):
  assert cli.main(["yijax", "model-info", "--config=configs/models/tiny.py", "--config.num_kv_head=2"]) == 2
  err = capsys.readouterr().err
  assert "--config.num_kv_head" in err and "config.num_kv_heads" in err


def test_invalid_override_value_is_caught_before_compiling(capsys):
  rc = cli.main(["yijax", "model-info", "--config=configs/models/tiny.py", "--config.num_kv_heads=3"])
  assert rc == 1
  assert "num_kv_heads=3" in capsys.readouterr().err


def test_model_presets_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # outside the repo checkout: no configs/ here
  assert cli.main(["yijax", "model-info", "--config=yi_6b"]) == 0
  six = capsys.readouterr().out
  assert cli.main(["yijax", "model-info", "--config=yi_6b", "--config.num_layers=48"]) == 0
  assert "layers 32" in six and "layers 48" in capsys.readouterr().out
  assert cli.main(["yijax", "model-info", "--config=yi_7b"]) == 2
  err = capsys.readouterr().err
  assert "no such config file, and no preset of that name" in err and "yi_6b" in err
  from yijax import config_presets

  assert config_presets.get_config("run/tiny").train.steps == 300  # `yijax train --config=tiny`: the tiny run
  assert config_presets.get_config("run/yi_6b").model.num_layers == 32


def test_unknown_command_suggests(capsys):
  assert cli.main(["yijax", "generat"]) == 2
  assert "generate" in capsys.readouterr().err


def test_roundtrip_demo_and_generate(tmp_path, capsys):
  assert cli.main(["yijax", "roundtrip-demo", f"--workdir={tmp_path}", "--max_new_tokens=4"]) == 0
  assert "identical after the round trip: True" in capsys.readouterr().out
  out = tmp_path / "out.jsonl"
  rc = cli.main(["yijax", "generate", f"--ckpt={tmp_path / 'reimported'}", "--prompt_ids=1,2,3",
                 "--prompt_ids=4,5", "--max_new_tokens=3", f"--output={out}"])
  assert rc == 0
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["prompt_ids"] for r in records] == [[1, 2, 3], [4, 5]]
  assert all(len(r["token_ids"]) == 3 for r in records)
  # --output=- : the same records as JSONL on stdout, and nothing else there (for pipes)
  capsys.readouterr()
  assert cli.main(["yijax", "generate", f"--ckpt={tmp_path / 'reimported'}", "--prompt_ids=1,2,3",
                   "--prompt_ids=4,5", "--max_new_tokens=3", "--output=-"]) == 0
  assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == records


def test_generate_errors(tmp_path, capsys):
  assert cli.main(["yijax", "generate", f"--ckpt={tmp_path}", "--prompt_ids=1"]) == 1
  assert "is not a yijax model" in capsys.readouterr().err
  assert cli.main(["yijax", "convert", "sideways", "--out=x"]) == 1
  assert "hf-to-yijax" in capsys.readouterr().err
