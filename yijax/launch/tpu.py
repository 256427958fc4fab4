"""Cloud TPU VM slices and pods: ship the code, set up once, run the same command on every worker.

Everything goes through `gcloud compute tpus tpu-vm scp|ssh --worker=all`, so a
2-host v4-16 and a 64-host v5e-256 are launched alike. The training command
runs in `~/<remote_dir>` on every worker with `--config.distributed.enabled=true`:
`jax.distributed.initialize()` reads the slice's workers from the TPU VM
metadata, each process reads its own data shard, process 0 writes the metrics,
and every process writes its part of each checkpoint under the shared WORKDIR.

Code sync:
  git    `git archive HEAD` (the committed code; a dirty tree is refused unless
         --allow_dirty), unpacked into ~/<remote_dir>; `--setup` installs it
         editable (`pip install -e ".[tpu]"`), so later syncs need no reinstall.
  wheel  `pip wheel` of the working tree (uncommitted changes included) plus
         configs/ and experiments/ (the training command's --config files),
         installed with `pip install --force-reinstall --no-deps`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess

from yijax.launch.common import LaunchError, Step, command, distributed_command

SYNC_MODES = ("git", "wheel", "none")
SOURCE_ARCHIVE = "yijax-src.tar.gz"
WHEEL_BUNDLE = "yijax-wheel.tar.gz"
LOCAL_DIR = "dist"


@dataclasses.dataclass(frozen=True)
class TpuTarget:
  """A TPU VM slice: its name, and zone/project (empty: gcloud's configured defaults)."""

  name: str
  zone: str = ""
  project: str = ""
  worker: str = "all"

  def gcloud(self, verb: str, *args: str, command: str = "") -> tuple[str, ...]:
    location = [f"--zone={self.zone}"] * bool(self.zone) + [f"--project={self.project}"] * bool(self.project)
    extra = [f"--command={command}"] * bool(command)
    return ("gcloud", "compute", "tpus", "tpu-vm", verb, *args, *location, f"--worker={self.worker}", *extra)

  def ssh(self, remote_command: str) -> tuple[str, ...]:
    return self.gcloud("ssh", self.name, command=remote_command)

  def scp(self, local: str, remote: str) -> tuple[str, ...]:
    return self.gcloud("scp", local, f"{self.name}:{remote}")


def plan(target: TpuTarget, train_argv: list[str], sync: str = "git", setup: bool = False,
         remote_dir: str = "yijax", wheel_name: str = "") -> list[Step]:
  """Every command of a launch, in order: package, copy, unpack, (set up), train."""
  if sync not in SYNC_MODES:
    raise LaunchError(f"--sync={sync}: expected one of {', '.join(SYNC_MODES)}")
  if not target.name:
    raise LaunchError("--tpu is required: the TPU VM's name (gcloud compute tpus tpu-vm list)")
  home_dir = f"~/{remote_dir}"
  steps: list[Step] = []
  if sync == "git":
    archive = f"{LOCAL_DIR}/{SOURCE_ARCHIVE}"
    steps += [
        command(f"package the committed code (git HEAD) into {LOCAL_DIR}/", ("mkdir", "-p", LOCAL_DIR),
                ("git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD")),
        command("copy it to every worker", target.scp(archive, SOURCE_ARCHIVE)),
        command(f"unpack it into {home_dir} on every worker",
                target.ssh(f"mkdir -p {home_dir} && tar -xzf {SOURCE_ARCHIVE} -C {home_dir}")),
    ]
    if setup:
      steps.append(command("set up once: install yijax (editable) with the TPU extras on every worker",
                           target.ssh(f'cd {home_dir} && python3 -m pip install -q -U pip && '
                                      f'python3 -m pip install -q -e ".[tpu]"')))
  elif sync == "wheel":
    if not wheel_name:
      raise LaunchError("--sync=wheel needs the wheel's file name (read from setup.py's version)")
    bundle = f"{LOCAL_DIR}/{WHEEL_BUNDLE}"
    steps += [
        command(f"build the yijax wheel from the working tree into {LOCAL_DIR}/ and bundle it with configs/ "
                "and experiments/ (the --config files)",
                ("python3", "-m", "pip", "wheel", "-q", "--no-deps", f"--wheel-dir={LOCAL_DIR}", "."),
                ("tar", "-czf", bundle, "configs", "experiments", "-C", LOCAL_DIR, wheel_name)),
        command("copy the bundle to every worker", target.scp(bundle, WHEEL_BUNDLE)),
        command(f"unpack it into {home_dir} on every worker",
                target.ssh(f"mkdir -p {home_dir} && tar -xzf {WHEEL_BUNDLE} -C {home_dir}")),
    ]
    if setup:
      steps.append(command("set up once: install yijax's dependencies with the TPU extras on every worker",
                           target.ssh(f'cd {home_dir} && python3 -m pip install -q -U pip && '
                                      f'python3 -m pip install -q "./{wheel_name}[tpu]"')))
    steps.append(command("install this build of yijax on every worker",
                         target.ssh(f"cd {home_dir} && python3 -m pip install -q --force-reinstall --no-deps "
                                    f"./{wheel_name}")))
  elif setup:
    raise LaunchError("--setup installs the code that --sync ships; with --sync=none install yijax on the "
                      "workers yourself, or use --sync=git or --sync=wheel")
  train = " ".join(_remote_quote(a) for a in distributed_command(train_argv))
  steps.append(command("train: the same command on every worker (jax.distributed finds its peers)",
                       target.ssh(f'cd {home_dir} && export PATH="$HOME/.local/bin:$PATH" && {train}')))
  return steps


def _remote_quote(arg: str) -> str:
  """Quotes for the workers' shell; double quotes, so the whole --command='...' stays readable."""
  if re.fullmatch(r"[A-Za-z0-9_\-+=/.,:@%^]+", arg):
    return arg
  escaped = re.sub(r'(["\\$`])', r"\\\1", arg)
  return f'"{escaped}"'


def wheel_file_name(setup_py: str = "setup.py") -> str:
  """yijax-<version>-py3-none-any.whl, the version read from setup.py."""
  try:
    text = open(setup_py).read()
  except FileNotFoundError:
    raise LaunchError(f"{setup_py} not found: run `yijax launch` from the root of the yijax checkout") from None
  match = re.search(r"""version\s*=\s*["']([^"']+)["']""", text)
  if not match:
    raise LaunchError(f"{setup_py} has no version=\"...\": cannot name the wheel that --sync=wheel builds")
  return f"yijax-{match.group(1)}-py3-none-any.whl"


def check_checkout(sync: str, allow_dirty: bool) -> str | None:
  """Checks that the current directory is the checkout to ship; returns the HEAD commit for git mode.

  Raises LaunchError for a dirty tree in git mode unless allow_dirty (then the
  uncommitted changes are simply not shipped).
  """
  if sync == "none":
    return None
  if not os.path.exists("setup.py"):
    raise LaunchError(f"--sync={sync} ships the current directory, which has no setup.py: "
                      "run `yijax launch` from the root of the yijax checkout")
  if sync != "git":
    return None
  try:
    head = _git("rev-parse", "HEAD").strip()
    dirty = _git("status", "--porcelain").rstrip("\n")
  except (FileNotFoundError, subprocess.CalledProcessError):
    raise LaunchError("--sync=git needs a git checkout with at least one commit; "
                      "use --sync=wheel to ship the working tree as it is") from None
  if dirty and not allow_dirty:
    changed = ", ".join(line[3:] for line in dirty.splitlines()[:5])
    raise LaunchError(f"--sync=git ships the last commit, but the working tree has uncommitted changes "
                      f"({changed}{', ...' if len(dirty.splitlines()) > 5 else ''}): commit them, add "
                      f"--allow_dirty to ship HEAD without them, or use --sync=wheel to ship the working tree")
  return head


def _git(*args: str) -> str:
  return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout
