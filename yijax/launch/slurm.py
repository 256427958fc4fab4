"""SLURM GPU clusters: an sbatch script whose `srun` starts the training command on every node.

Inside an `srun` step JAX detects SLURM itself (jax._src.clusters.slurm_cluster:
SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID):
the coordinator is the first node of the step on a port derived from the job
id, the process count is SLURM_NTASKS and the process id SLURM_PROCID. So the
script only adds `--config.distributed.enabled=true` to the training command.

Processes: one per node by default, each driving all of its node's GPUs. JAX
would otherwise give each SLURM task only the GPU numbered SLURM_LOCALID, so
the script exports JAX_LOCAL_DEVICE_IDS=0,...,G-1. With --one_process_per_gpu
there are G tasks per node and JAX's default (task i drives GPU i) applies;
the tasks must all see every GPU of the node, which `--gpus-per-node` gives.
The code and the WORKDIR are on the cluster's shared file system, and the job
runs in the directory it was submitted from.
"""

from __future__ import annotations

import dataclasses

from yijax.launch.common import LaunchError, Step, command, distributed_command, shell_join


@dataclasses.dataclass(frozen=True)
class SlurmJob:
  """The resources of one job; empty strings leave a setting to the cluster's defaults."""

  nodes: int
  gpus_per_node: int
  job_name: str = "yijax-train"
  partition: str = ""
  time: str = ""
  account: str = ""
  cpus_per_task: int = 0
  one_process_per_gpu: bool = False
  sbatch_options: tuple[str, ...] = ()
  prelude: tuple[str, ...] = ()

  def validate(self) -> None:
    if self.nodes < 1:
      raise LaunchError(f"--nodes={self.nodes}: a job needs at least one node")
    if self.gpus_per_node < 1:
      raise LaunchError(f"--gpus_per_node={self.gpus_per_node}: give the number of GPUs on each node (e.g. 8)")
    for option in self.sbatch_options:
      if option.startswith("-") or "\n" in option:
        raise LaunchError(f"--sbatch_option={option!r}: give it without dashes, e.g. --sbatch_option=constraint=h100")

  @property
  def tasks_per_node(self) -> int:
    return self.gpus_per_node if self.one_process_per_gpu else 1


def sbatch_script(job: SlurmJob, train_argv: list[str]) -> str:
  """The batch script: #SBATCH resources, the environment, and the srun line."""
  job.validate()
  directives = [
      f"--job-name={job.job_name}",
      f"--nodes={job.nodes}",
      f"--ntasks-per-node={job.tasks_per_node}",
      f"--gpus-per-node={job.gpus_per_node}",
  ]
  directives += [f"--cpus-per-task={job.cpus_per_task}"] * bool(job.cpus_per_task)
  directives += [f"--{name}={value}" for name, value in
                 (("partition", job.partition), ("time", job.time), ("account", job.account)) if value]
  directives += [f"--{option}" for option in job.sbatch_options]
  directives.append(f"--output={job.job_name}-%j.out")
  lines = ["#!/bin/bash"] + [f"#SBATCH {d}" for d in directives] + ["set -eo pipefail"]
  lines += list(job.prelude)
  if not job.one_process_per_gpu:
    devices = ",".join(str(i) for i in range(job.gpus_per_node))
    lines.append(f"export JAX_LOCAL_DEVICE_IDS={devices}  # one process per node drives all its GPUs")
  lines.append(shell_join(["srun", "--kill-on-bad-exit=1", *distributed_command(train_argv)]))
  return "\n".join(lines) + "\n"


def plan(job: SlurmJob, train_argv: list[str], script_path: str = "") -> list[Step]:
  """Write the script, then submit it with sbatch."""
  if not train_argv:
    raise LaunchError("no training command: put it after `--`, e.g. yijax launch slurm --nodes=2 "
                      "--gpus_per_node=8 -- yijax train --config=configs/pretrain/tiny.py --workdir=DIR")
  path = script_path or f"{job.job_name}.sbatch"
  return [
      Step(f"write the batch script {path}", path=path, content=sbatch_script(job, train_argv)),
      command("submit it (squeue --me shows it; the log is the --output file)", ("sbatch", path)),
  ]
