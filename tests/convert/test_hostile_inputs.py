"""Damaged or hostile model files give one line naming the file; --overwrite replaces only model
directories; outputs get the user's umask."""

import json
import os
import stat
import struct

import pytest

from yijax import cli


def _convert(capsys, hf_dir, out, *extra):
  status = cli.main(["yijax", "convert", "hf-to-yijax", f"--hf_dir={hf_dir}", f"--out={out}", *extra])
  err = capsys.readouterr().err.strip()
  return status, err


def _one_line_error(status, err, *needles):
  assert status == 1, err
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  for needle in needles:
    assert needle in err, err


def _safetensors(path, header: dict | bytes, payload: bytes = b"", length: int | None = None):
  body = header if isinstance(header, bytes) else json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(body) if length is None else length) + body + payload)


@pytest.fixture
def hf_dir(tmp_path, hf_llama):
  hf_llama(tmp_path / "hf")
  return tmp_path / "hf"


def test_damaged_and_hostile_safetensors(tmp_path, hf_dir, capsys):
  weights = hf_dir / "model.safetensors"
  good = weights.read_bytes()
  cases = {
      "truncated": good[: len(good) // 2],
      "bad offsets": None,
      "terabytes": None,
      "2^50 header": struct.pack("<Q", 2**50) + b"{}",
      "empty": b"",
  }
  for name, data in cases.items():
    if name == "bad offsets":
      _safetensors(weights, {"model.embed_tokens.weight": {"dtype": "F32", "shape": [97, 48],
                                                            "data_offsets": [100, 50]}}, b"\0" * 64)
    elif name == "terabytes":
      _safetensors(weights, {"model.embed_tokens.weight": {"dtype": "F32", "shape": [2**38],
                                                            "data_offsets": [0, 2**40]}}, b"\0" * 64)
    else:
      weights.write_bytes(data)
    status, err = _convert(capsys, hf_dir, tmp_path / f"out-{name.replace(' ', '-')}")
    _one_line_error(status, err, str(weights))
    assert not (tmp_path / f"out-{name.replace(' ', '-')}").exists()


def test_corrupt_json_names_the_file(tmp_path, hf_dir, capsys):
  (hf_dir / "config.json").write_text('{"vocab_size": 97, "hidd')
  status, err = _convert(capsys, hf_dir, tmp_path / "out")
  _one_line_error(status, err, str(hf_dir / "config.json"), "not valid JSON")


def test_index_may_not_point_outside_the_model_directory(tmp_path, hf_dir, capsys):
  os.rename(hf_dir / "model.safetensors", tmp_path / "elsewhere.safetensors")
  (hf_dir / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"model.embed_tokens.weight": "../elsewhere.safetensors"}}))
  status, err = _convert(capsys, hf_dir, tmp_path / "out")
  _one_line_error(status, err, "outside", "../elsewhere.safetensors")


def test_corrupt_model_config_names_the_file(tmp_path, hf_dir, capsys):
  status, _ = _convert(capsys, hf_dir, tmp_path / "model")
  assert status == 0
  (tmp_path / "model" / "model_config.json").write_text('{"vocab_size": ')
  assert cli.main(["yijax", "generate", f"--ckpt={tmp_path / 'model'}", "--prompt_ids=1,2",
                   "--max_new_tokens=2"]) == 1
  err = capsys.readouterr().err.strip()
  _one_line_error(1, err, str(tmp_path / "model" / "model_config.json"), "not valid JSON")


def test_overwrite_replaces_only_model_directories(tmp_path, hf_dir, capsys):
  out = tmp_path / "mine"
  out.mkdir()
  (out / "thesis.tex").write_text("years of work")
  status, err = _convert(capsys, hf_dir, out, "--overwrite")
  _one_line_error(status, err, "not a model directory", "thesis.tex")
  assert (out / "thesis.tex").read_text() == "years of work"
  # a model directory it wrote is replaced
  model = tmp_path / "model"
  assert _convert(capsys, hf_dir, model)[0] == 0
  assert _convert(capsys, hf_dir, model, "--overwrite")[0] == 0
  assert cli.main(["yijax", "surgery", f"--ckpt={model}", f"--out={out}", "--stack=2", "--overwrite"]) == 1
  assert "not a model directory" in capsys.readouterr().err
  assert (out / "thesis.tex").read_text() == "years of work"
  # an --out that is a file
  afile = tmp_path / "afile"
  afile.write_text("x")
  status, err = _convert(capsys, hf_dir, afile)
  _one_line_error(status, err, "is a file, not a directory")


def test_outputs_get_the_users_umask(tmp_path, hf_dir, capsys):
  old = os.umask(0o022)
  try:
    assert _convert(capsys, hf_dir, tmp_path / "model")[0] == 0
    assert cli.main(["yijax", "convert", "yijax-to-hf", f"--ckpt={tmp_path / 'model'}",
                     f"--out={tmp_path / 'hf_out'}"]) == 0
  finally:
    os.umask(old)
  for root in (tmp_path / "model", tmp_path / "hf_out"):
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755, root
    for path in root.rglob("*"):
      mode = stat.S_IMODE(os.stat(path).st_mode)
      assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
