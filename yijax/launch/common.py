"""What every launcher shares: a plan is a list of steps, printed or run in order.

A step is either a command (an argv list, run without a shell) or a file to
write. `render` prints a plan as a shell script (numbered comments, commands
quoted for copy and paste, files as here-documents), which is what
`--dry_run` shows and what the README documents; `execute` runs the same
steps and stops at the first failure with the command and its output.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shlex
import subprocess
import sys

from yijax.errors import YijaxError


class LaunchError(YijaxError, ValueError):
  """A launch that cannot go on: the message names the command or flag and the fix."""


@dataclasses.dataclass(frozen=True)
class Step:
  """One thing a launch does: run `commands` (argv tuples) in order, or write `content` to `path`."""

  description: str
  commands: tuple[tuple[str, ...], ...] = ()
  path: str = ""
  content: str = ""

  def __post_init__(self):
    if bool(self.commands) == bool(self.path):
      raise ValueError("a Step runs commands or writes a file (path), not both or neither")


def command(description: str, *commands: tuple[str, ...]) -> Step:
  return Step(description, commands=tuple(tuple(c) for c in commands))


def quote_arg(arg: str) -> str:
  """shlex.quote, but `--flag=value` keeps the flag bare: `--command='cd ~/yijax && ...'`."""
  if arg.startswith("--") and "=" in arg:
    flag, value = arg.split("=", 1)
    if shlex.quote(flag) == flag:
      return f"{flag}={shlex.quote(value)}"
  return shlex.quote(arg)


def shell_join(argv) -> str:
  return " ".join(quote_arg(a) for a in argv)


def render(steps: list[Step]) -> str:
  """The plan as a runnable shell script: `# [i/n] what` then the command or a here-document."""
  lines = []
  for i, step in enumerate(steps, 1):
    lines.append(f"# [{i}/{len(steps)}] {step.description}")
    if step.commands:
      lines.extend(shell_join(argv) for argv in step.commands)
    else:
      lines.append(f"cat > {shlex.quote(step.path)} <<'EOF'")
      lines.extend(step.content.rstrip("\n").split("\n"))
      lines.append("EOF")
  return "\n".join(lines) + "\n"


def execute(steps: list[Step], tail_lines: int = 60) -> None:
  """Runs the steps in order, streaming their output; the first failure raises LaunchError."""
  for i, step in enumerate(steps, 1):
    print(f"# [{i}/{len(steps)}] {step.description}", flush=True)
    if step.path:
      with open(step.path, "w") as f:
        f.write(step.content)
      print(f"wrote {step.path}", flush=True)
      continue
    for argv in step.commands:
      print(shell_join(argv), flush=True)
      _run_streaming(argv, f"step {i}/{len(steps)} ({step.description})", tail_lines)


def _run_streaming(argv: tuple[str, ...], where: str, tail_lines: int) -> None:
  """Runs one command, echoing its output; a non-zero exit raises LaunchError with the output's tail."""
  tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
  try:
    process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")
  except FileNotFoundError:
    raise LaunchError(f"{where}: {argv[0]!r} is not installed or not on PATH; install it (gcloud: "
                      f"https://cloud.google.com/sdk/docs/install) or run the --dry_run commands by hand") from None
  for line in process.stdout:
    sys.stdout.write(line)
    sys.stdout.flush()
    tail.append(line.rstrip("\n"))
  code = process.wait()
  if code != 0:
    output = "\n".join(tail) or "(no output)"
    raise LaunchError(f"{where} failed with exit status {code}:\n  {shell_join(argv)}\nits last output:\n"
                      f"{output}\nnothing after this command ran; fix the cause and rerun the same launch command")


YIJAX_SUBCOMMANDS_WITH_RUN_CONFIG = ("train",)


def distributed_command(train_argv: list[str]) -> list[str]:
  """The training command, unchanged, plus `--config.distributed.enabled=true` for `yijax train`.

  Every worker runs the same command; with `enabled=true`, `jax.distributed.initialize()`
  finds the peers itself (TPU VM metadata, SLURM variables, or JAX_COORDINATOR_ADDRESS).
  A command that already sets the field, or is not `yijax train`, is left as it is.
  """
  argv = list(train_argv)
  if not argv:
    raise LaunchError("no training command: put it after `--`, e.g. "
                      "yijax launch tpu --tpu=NAME -- yijax train --config=configs/pretrain/tiny.py --workdir=DIR")
  if any(a.startswith("--config.distributed.enabled") for a in argv):
    return argv
  if _yijax_subcommand(argv) in YIJAX_SUBCOMMANDS_WITH_RUN_CONFIG:
    argv.append("--config.distributed.enabled=true")
  return argv


def _yijax_subcommand(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv[:-1]):
    if os.path.basename(arg) == "yijax" or arg == "yijax.cli":
      return argv[i + 1]
  return None


def workdir_of(train_argv: list[str]) -> str | None:
  """The `--workdir=` value of the training command (None when it has none)."""
  for i, arg in enumerate(train_argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(train_argv):
      return train_argv[i + 1]
  return None


def check_shared_workdir(train_argv: list[str]) -> None:
  """Refuses a URL workdir of a scheme the run cannot write (gs:// and shared paths are fine)."""
  from yijax import paths

  workdir = workdir_of(train_argv)
  if workdir and paths.is_url(workdir):
    try:
      paths.check_url(workdir)
    except paths.PathError as e:
      raise LaunchError(str(e)) from None
