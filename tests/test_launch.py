"""`yijax launch`: the dry-run commands the README documents, real runs with stand-in gcloud/sbatch,
and plain multi-node initialization from JAX_* environment variables (2 local CPU processes)."""

import json
import os
import shlex
import socket
import subprocess
import sys
import tarfile

import pytest

from yijax import cli, sharding
from yijax.launch import common
from yijax.models.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_example(prefix):
  """The README's `$ yijax launch ...` example: (argv after `yijax`, the documented output)."""
  lines = open(os.path.join(ROOT, "README.md")).read().split("\n")
  start = next(i for i, line in enumerate(lines) if line.startswith(f"$ {prefix}"))
  command = lines[start][2:]
  i = start
  while command.endswith("\\"):
    i += 1
    command = command[:-1] + lines[i]
  end = lines.index("```", i)
  return shlex.split(command), "\n".join(lines[i + 1:end]) + "\n"


def _launch(argv, capsys):
  code = cli.main(argv)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_tpu_dry_run_is_what_the_readme_documents(capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  argv, documented = _readme_example("yijax launch tpu")
  code, out, _ = _launch(argv, capsys)
  assert code == 0
  assert out == documented
  lines = out.splitlines()
  assert [l for l in lines if l.startswith("# [")][-1].startswith("# [5/5] train")
  gcloud = [shlex.split(l) for l in lines if l.startswith("gcloud ")]
  assert len(gcloud) == 4 and all("--worker=all" in c for c in gcloud)
  assert gcloud[0][4:7] == ["scp", "dist/yijax-src.tar.gz", "yi-v4-16:yijax-src.tar.gz"]
  remote = gcloud[-1][-1]
  assert remote.startswith("--command=cd ~/yijax && ") and remote.endswith(
      "yijax train --config=configs/pretrain/tiny.py --workdir=gs://my-bucket/runs/tiny "
      "--config.distributed.enabled=true")


def test_slurm_dry_run_is_what_the_readme_documents(capsys, tmp_path):
  argv, documented = _readme_example("yijax launch slurm")
  code, out, _ = _launch(argv, capsys)
  assert code == 0
  assert out == documented
  script = out.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0] + "\n"
  assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node=8\n" in script
  assert script.splitlines()[-1] == ("srun --kill-on-bad-exit=1 yijax train --config=configs/pretrain/tiny.py "
                                     "--workdir=/shared/runs/tiny --config.distributed.enabled=true")
  assert out.endswith("sbatch yijax-train.sbatch\n")
  (tmp_path / "job.sbatch").write_text(script)
  assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0
  # the dry run is itself a shell script: running it writes the same batch script
  subprocess.run(["bash", "-c", out.split("# [2/2]")[0]], cwd=tmp_path, check=True)
  assert (tmp_path / "yijax-train.sbatch").read_text() == script


def test_slurm_one_process_per_gpu_and_options():
  from yijax.launch import slurm

  job = slurm.SlurmJob(4, 4, one_process_per_gpu=True, account="lab", cpus_per_task=8,
                       sbatch_options=("requeue", "signal=TERM@300"), prelude=("source .venv/bin/activate",))
  script = slurm.sbatch_script(job, ["yijax", "train", "--config=c.py", "--config.distributed.enabled=false"])
  assert "#SBATCH --ntasks-per-node=4\n" in script and "JAX_LOCAL_DEVICE_IDS" not in script
  assert "#SBATCH --requeue\n#SBATCH --signal=TERM@300\n" in script and "#SBATCH --account=lab\n" in script
  assert script.endswith("source .venv/bin/activate\nsrun --kill-on-bad-exit=1 yijax train --config=c.py "
                         "--config.distributed.enabled=false\n")  # an explicit setting is kept as given
  with pytest.raises(common.LaunchError, match="--sbatch_option="):
    slurm.sbatch_script(slurm.SlurmJob(1, 1, sbatch_options=("--requeue",)), ["yijax", "train"])


def test_usage_errors_name_the_fix(capsys):
  code, _, err = _launch(["yijax", "launch", "tpu", "--tpu=x", "yijax", "train"], capsys)
  assert code == 2 and "after `--`" in err
  code, _, err = _launch(["yijax", "launch", "gke", "--", "yijax", "train"], capsys)
  assert code == 2 and "tpu | slurm" in err
  code, _, err = _launch(["yijax", "launch", "slurm", "--tpu=x", "--nodes=1", "--gpus_per_node=1", "--",
                          "yijax", "train"], capsys)
  assert code == 1 and "--tpu is a `yijax launch tpu` flag" in err
  code, _, err = _launch(["yijax", "launch", "tpu", "--dry_run", "--", "yijax", "train"], capsys)
  assert code == 1 and "--tpu is required" in err


def test_gs_workdir_is_launched_and_other_url_schemes_are_refused(capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  command = ["--", "yijax", "train", "--config=configs/pretrain/tiny.py", "--workdir=gs://bucket/runs/x"]
  code, out, err = _launch(["yijax", "launch", "tpu", "--tpu=x", "--sync=none", "--dry_run", *command], capsys)
  assert code == 0 and "--workdir=gs://bucket/runs/x --config.distributed.enabled=true'" in out
  assert "workdir" not in err  # gs:// is a run directory every worker reaches
  s3 = [a.replace("gs://", "s3://") for a in command]
  code, out, err = _launch(["yijax", "launch", "tpu", "--tpu=x", "--sync=none", "--dry_run", *s3], capsys)
  assert code == 0 and "--workdir=s3://bucket/runs/x" in out and "s3:// is not a supported run directory" in err
  code, _, err = _launch(["yijax", "launch", "tpu", "--tpu=x", "--sync=none", *s3], capsys)
  assert code == 1 and "--workdir=s3://bucket/runs/x" in err and "gs://BUCKET/PATH" in err
  code, _, err = _launch(["yijax", "train", "--config=configs/pretrain/tiny.py", "--workdir=s3://bucket/runs/x"], capsys)
  assert code == 1 and "only local paths and gs://" in err  # yijax train itself refuses it before touching anything


def _fake_tools(tmp_path, monkeypatch, fail_on=""):
  """gcloud and sbatch stand-ins on PATH that log their argv (one JSON list per line)."""
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
  bin_dir.mkdir()
  for tool in ("gcloud", "sbatch"):
    path = bin_dir / tool
    path.write_text(f"""#!{sys.executable}
import json, sys
open({str(log)!r}, "a").write(json.dumps([{tool!r}] + sys.argv[1:]) + "\\n")
if {fail_on!r} and {fail_on!r} in " ".join(sys.argv):
  print("ERROR: (gcloud.compute.tpus.tpu-vm.ssh) permission denied (publickey)")
  sys.exit(255)
print("Submitted batch job 42" if {tool!r} == "sbatch" else "ok")
""")
    path.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  return log


def _checkout(tmp_path):
  repo = tmp_path / "checkout"
  repo.mkdir()
  (repo / "setup.py").write_text('setup(name="yijax", version="0.1.0")\n')
  git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)
  git("init", "-q")
  git("add", "setup.py")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
  return repo


def test_tpu_launch_runs_the_dry_run_commands(tmp_path, monkeypatch, capsys):
  log = _fake_tools(tmp_path, monkeypatch)
  monkeypatch.chdir(_checkout(tmp_path))
  flags = ["--tpu=pod", "--zone=z", "--project=p", "--setup"]
  command = ["--", "yijax", "train", "--config=configs/pretrain/tiny.py", "--workdir=/shared/run"]
  code, planned, _ = _launch(["yijax", "launch", "tpu", *flags, "--dry_run", *command], capsys)
  assert code == 0
  code, out, err = _launch(["yijax", "launch", "tpu", *flags, *command], capsys)
  assert code == 0, err
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  expected = [shlex.split(l) for l in planned.splitlines() if l.startswith("gcloud ")]
  assert calls == expected
  with tarfile.open("dist/yijax-src.tar.gz") as archive:
    assert archive.getnames() == ["setup.py"]
  # a dirty tree is refused in git mode, naming the ways out
  open("setup.py", "a").write("# edit\n")
  code, _, err = _launch(["yijax", "launch", "tpu", *flags, *command], capsys)
  assert code == 1 and "--allow_dirty" in err and "--sync=wheel" in err and "setup.py" in err
  assert len(log.read_text().splitlines()) == len(calls)


def test_launch_stops_at_the_first_failure_with_command_and_output(tmp_path, monkeypatch, capsys):
  log = _fake_tools(tmp_path, monkeypatch, fail_on="tar -xzf")
  monkeypatch.chdir(_checkout(tmp_path))
  code, _, err = _launch(["yijax", "launch", "tpu", "--tpu=pod", "--", "yijax", "train", "--workdir=/r"], capsys)
  assert code == 1
  assert "step 3/4 (unpack it into ~/yijax on every worker) failed with exit status 255" in err
  assert "gcloud compute tpus tpu-vm ssh pod --worker=all --command='mkdir -p ~/yijax" in err
  assert "permission denied (publickey)" in err
  assert [json.loads(line)[4] for line in log.read_text().splitlines()] == ["scp", "ssh"]  # training never ran


def test_slurm_write_and_submit(tmp_path, monkeypatch, capsys):
  log = _fake_tools(tmp_path, monkeypatch)
  monkeypatch.chdir(tmp_path)
  job = ["yijax", "launch", "slurm", "--nodes=2", "--gpus_per_node=8"]
  command = ["--", "yijax", "train", "--config=configs/pretrain/tiny.py", "--workdir=/shared/run"]
  code, out, _ = _launch([*job, "--write=job.sbatch", *command], capsys)
  assert code == 0 and "sbatch job.sbatch" in out and not log.exists()
  assert (tmp_path / "job.sbatch").read_text().startswith("#!/bin/bash\n#SBATCH --job-name=yijax-train\n")
  code, out, _ = _launch([*job, *command], capsys)
  assert code == 0 and "Submitted batch job 42" in out
  assert json.loads(log.read_text()) == ["sbatch", "yijax-train.sbatch"]


def test_distributed_command_and_env_parsing(monkeypatch):
  assert common.distributed_command(["yijax", "train", "--workdir=w"])[-1] == "--config.distributed.enabled=true"
  assert common.distributed_command(["python3", "-m", "yijax.cli", "train"])[-1] == "--config.distributed.enabled=true"
  assert common.distributed_command(["bash", "run.sh"]) == ["bash", "run.sh"]
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    sharding._env_int("JAX_NUM_PROCESSES", "the number of processes")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  assert sharding._env_int("JAX_NUM_PROCESSES", "") == 2


TRAIN_ARGS = [
    "--config=configs/pretrain/tiny.py", "--config.model.num_layers=2", "--config.train.steps=3",
    "--config.optimizer.warmup_steps=1", "--config.train.batch_size=8", "--config.train.seq_len=64",
    "--config.train.progress_bar=False", "--config.checkpoint.every_steps=3", "--config.eval.batches=0",
    "--config.data.logical_shards=2",
]


@pytest.mark.slow  # an end-to-end training (15-65 s on 2 cores): CI runs it, the inner loop does not
def test_two_processes_from_jax_environment_variables(tmp_path, prepared_data):
  """What the README's plain multi-node example does, on one machine: no --config.distributed.* at all."""
  readme = open(os.path.join(ROOT, "README.md")).read()
  for process_id in range(2):
    assert f"JAX_COORDINATOR_ADDRESS=node0:8476 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID={process_id} \\\n" in readme
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "yijax.cli", "train", *TRAIN_ARGS, f"--config.data.prepared_dir={prepared_data}",
             f"--workdir={workdir}"]
  processes = []
  for process_id in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id))
    processes.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  finals = [next(l for l in out.splitlines() if l.startswith("final: ")) for out in outputs]
  assert finals[0] == finals[1] and "step=3" in finals[0]
  assert len(open(workdir / "metrics.jsonl").readlines()) == 3  # process 0 alone writes metrics
  assert sorted(os.listdir(workdir / "checkpoints" / "3" / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
