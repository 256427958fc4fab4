"""yijax launch tpu|slurm [flags] [--dry_run] -- yijax train --config=... --workdir=...

The training command after `--` is passed on unchanged (plus
`--config.distributed.enabled=true`), so what runs on every host is exactly
what runs on one machine.

  yijax launch tpu --tpu=NAME [--zone=Z --project=P] [--sync=git|wheel|none] [--setup] [--dry_run] -- CMD
  yijax launch slurm --nodes=N --gpus_per_node=G [--partition= --time= --account=] [--dry_run | --write=F] -- CMD
"""

from __future__ import annotations

import sys

from absl import flags

from yijax.cli import UsageError

TARGETS = ("tpu", "slurm")
EXAMPLE = "yijax launch tpu --tpu=NAME --dry_run -- yijax train --config=configs/pretrain/tiny.py --workdir=DIR"


def define_flags(fv, argv):
  flags.DEFINE_boolean("dry_run", False, "print every command, numbered, and run nothing", flag_values=fv)
  # tpu
  flags.DEFINE_string("tpu", None, "tpu: the TPU VM's name (gcloud compute tpus tpu-vm list)", flag_values=fv)
  flags.DEFINE_string("zone", "", "tpu: its zone (default: gcloud config get compute/zone)", flag_values=fv)
  flags.DEFINE_string("project", "", "tpu: its project (default: gcloud config get project)", flag_values=fv)
  flags.DEFINE_string("worker", "all", "tpu: which workers run the commands (all, or e.g. 0)", flag_values=fv)
  flags.DEFINE_enum("sync", "git", ["git", "wheel", "none"],
                    "tpu: ship the code as git HEAD (git archive), as a wheel of the working tree, or not at all",
                    flag_values=fv)
  flags.DEFINE_boolean("setup", False, "tpu: install yijax and its TPU dependencies on every worker "
                       "(the first launch on a fresh TPU VM)", flag_values=fv)
  flags.DEFINE_boolean("allow_dirty", False, "tpu, --sync=git: ship HEAD even though the working tree has "
                       "uncommitted changes (they are not shipped)", flag_values=fv)
  flags.DEFINE_string("remote_dir", "yijax", "tpu: the code's directory on the workers, under $HOME",
                      flag_values=fv)
  # slurm
  flags.DEFINE_integer("nodes", 0, "slurm: number of nodes", flag_values=fv)
  flags.DEFINE_integer("gpus_per_node", 0, "slurm: GPUs on each node", flag_values=fv)
  flags.DEFINE_boolean("one_process_per_gpu", False, "slurm: one process per GPU instead of one per node",
                       flag_values=fv)
  flags.DEFINE_string("partition", "", "slurm: #SBATCH --partition", flag_values=fv)
  flags.DEFINE_string("time", "", "slurm: #SBATCH --time (e.g. 04:00:00)", flag_values=fv)
  flags.DEFINE_string("account", "", "slurm: #SBATCH --account", flag_values=fv)
  flags.DEFINE_string("job_name", "yijax-train", "slurm: #SBATCH --job-name (also names the script and log)",
                      flag_values=fv)
  flags.DEFINE_integer("cpus_per_task", 0, "slurm: #SBATCH --cpus-per-task (0: the cluster's default)",
                       flag_values=fv)
  flags.DEFINE_multi_string("sbatch_option", [], "slurm: another #SBATCH option without dashes, e.g. "
                            "constraint=h100 (repeatable)", flag_values=fv)
  flags.DEFINE_multi_string("prelude", [], "slurm: a shell line run before srun, e.g. 'source .venv/bin/activate' "
                            "(repeatable)", flag_values=fv)
  flags.DEFINE_string("write", None, "slurm: write the batch script to this file and do not submit it",
                      flag_values=fv)


def check_argv(argv):
  """The training command must come after `--`, and exactly one target before it."""
  if "--" not in argv:
    raise flags.Error(f"put the training command after `--`, e.g. {EXAMPLE}")
  before = argv[1:argv.index("--")]
  targets = [a for a in before if not a.startswith("-")]
  if len(targets) != 1 or targets[0] not in TARGETS:
    raise flags.Error(f"say where to launch, once, before `--`: yijax launch {{{' | '.join(TARGETS)}}} ... "
                      f"(got {targets or 'nothing'}); e.g. {EXAMPLE}")


def run(fv, args):
  from yijax.launch import common

  target, train_argv = args[0], list(args[1:])
  try:
    if fv.dry_run:  # the commands are printed whatever the workdir; only a real launch refuses
      _note(common.check_shared_workdir, train_argv)
    else:
      common.check_shared_workdir(train_argv)
    if target == "tpu":
      return _tpu(fv, train_argv)
    return _slurm(fv, train_argv)
  except common.LaunchError as e:
    raise UsageError(str(e)) from None


def _tpu(fv, train_argv):
  from yijax.launch import common, tpu

  slurm_only = [name for name in ("nodes", "gpus_per_node", "partition", "account", "write") if fv[name].present]
  if slurm_only:
    raise UsageError(f"--{slurm_only[0]} is a `yijax launch slurm` flag; TPU launches take --tpu/--zone/--project")
  if not fv.tpu:
    raise UsageError(f"--tpu is required: the TPU VM's name (gcloud compute tpus tpu-vm list), e.g. {EXAMPLE}")
  wheel_name = tpu.wheel_file_name() if fv.sync == "wheel" else ""
  target = tpu.TpuTarget(fv.tpu, fv.zone, fv.project, fv.worker)
  steps = tpu.plan(target, train_argv, fv.sync, fv.setup, fv.remote_dir, wheel_name)
  if fv.dry_run:
    sys.stdout.write(common.render(steps))
    _note(tpu.check_checkout, fv.sync, fv.allow_dirty)
    return 0
  head = tpu.check_checkout(fv.sync, fv.allow_dirty)
  if head:
    print(f"shipping git commit {head}", flush=True)
  common.execute(steps)
  return 0


def _note(check, *args):
  """A dry run prints its plan anyway and says on stderr why the real launch would refuse."""
  from yijax.launch import common

  try:
    check(*args)
  except common.LaunchError as e:
    print(f"note: without --dry_run the launch would stop here: {e}", file=sys.stderr)


def _slurm(fv, train_argv):
  from yijax.launch import common, slurm

  tpu_only = [name for name in ("tpu", "zone", "project", "sync", "setup", "allow_dirty") if fv[name].present]
  if tpu_only:
    raise UsageError(f"--{tpu_only[0]} is a `yijax launch tpu` flag; SLURM launches take --nodes/--gpus_per_node")
  if fv.nodes < 1 or fv.gpus_per_node < 1:
    raise UsageError("--nodes and --gpus_per_node are required, e.g. yijax launch slurm --nodes=2 "
                     "--gpus_per_node=8 --dry_run -- yijax train --config=configs/pretrain/tiny.py --workdir=DIR")
  if fv.dry_run and fv.write:
    raise UsageError("--dry_run prints the script and --write writes it; give one of them")
  job = slurm.SlurmJob(fv.nodes, fv.gpus_per_node, fv.job_name, fv.partition, fv.time, fv.account,
                       fv.cpus_per_task, fv.one_process_per_gpu, tuple(fv.sbatch_option), tuple(fv.prelude))
  steps = slurm.plan(job, train_argv, fv.write or "")
  if fv.dry_run:
    sys.stdout.write(common.render(steps))
    return 0
  if fv.write:
    common.execute(steps[:1])
    print(f"submit it with: sbatch {fv.write}")
    return 0
  common.execute(steps)
  return 0
