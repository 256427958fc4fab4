"""Run and model directories as local paths or gs:// URLs, behind one small API.

A local path is made absolute; a gs:// URL is kept as given. Orbax writes the
checkpoint arrays through tensorstore's GCS driver and its own small files
through etils.epath; the rest of a run directory (config.json, the tokenizer,
metrics, data-iterator states) goes through epath too, which reaches GCS with
gcsfs (`pip install "yijax[gcs]"`, part of the `tpu` extra) or with
tensorflow's gfile where tensorflow is installed.

GCS has no atomic rename and no append: orbax marks a finished checkpoint step
with a `commit_success.txt` instead of renaming a temporary directory (so
`checkpoint.latest_complete_step` asks orbax which steps are finalized), and
metrics.py stages its files locally and uploads whole files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile

from etils import epath

from yijax.errors import PathError  # noqa: F401 - re-exported

SCHEMES = ("gs",)



def is_url(path) -> bool:
  return "://" in str(path)


def check_url(url: str, what: str = "--workdir") -> str:
  """`url` without a trailing slash, if its scheme is one a run can use (PathError naming the fix if not)."""
  scheme, rest = url.split("://", 1)
  if scheme not in SCHEMES or not rest.strip("/"):
    raise PathError(
        f"{what}={url}: {scheme}:// is not a supported run directory or model location; only local paths "
        "and gs://BUCKET/PATH URLs are supported (for another store, mount it on every host and give the "
        "mount path)")
  return scheme + "://" + rest.rstrip("/")


def resolve(path, what: str = "--workdir") -> str:
  """An absolute local path, or a checked gs:// URL (with gcsfs installed) without a trailing slash."""
  path = os.fspath(path)
  if not is_url(path):
    return os.path.abspath(os.path.expanduser(path))
  url = check_url(path, what)
  if importlib.util.find_spec("gcsfs") is None and importlib.util.find_spec("tensorflow") is None:
    raise PathError(f"{what}={path}: gs:// locations need gcsfs; install it with "
                    "pip install \"yijax[gcs]\" (or pip install gcsfs) on every host")
  return url


def path(location) -> epath.Path:
  return epath.Path(location)


def join(base, *parts: str) -> str:
  if is_url(base):
    return str(epath.Path(base).joinpath(*parts))
  return os.path.join(base, *parts)


def parent(location) -> str:
  return str(epath.Path(location).parent) if is_url(location) else os.path.dirname(location)


def basename(location) -> str:
  return epath.Path(location).name


def exists(location) -> bool:
  return epath.Path(location).exists()


def isdir(location) -> bool:
  return epath.Path(location).is_dir()


def isfile(location) -> bool:
  return epath.Path(location).is_file()


def makedirs(location) -> None:
  epath.Path(location).mkdir(parents=True, exist_ok=True)


def read_text(location) -> str:
  return epath.Path(location).read_text(encoding="utf-8")


def read_json(location, what: str = "file"):
  """A JSON file's value; a file that does not parse is a DataError naming it."""
  import json

  from yijax.errors import DataError

  try:
    return json.loads(read_text(location))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{what} {location} is not valid JSON ({e}); restore or regenerate it") from None


def check_output_dir(location, flag: str = "--out") -> None:
  """An output directory must not be an existing file."""
  if exists(location) and not isdir(location):
    raise PathError(f"{flag}={location} is a file, not a directory; choose a directory path")


def user_mode_tree(location) -> None:
  """Gives every directory and file under a local output the permissions the user's umask gives (some
  writers, such as safetensors and tempfile, create files 0600 and directories 0700)."""
  if is_url(location):
    return
  mask = os.umask(0)
  os.umask(mask)
  os.chmod(location, 0o777 & ~mask)
  for root, dirs, files in os.walk(location):
    for name in dirs:
      os.chmod(os.path.join(root, name), 0o777 & ~mask)
    for name in files:
      os.chmod(os.path.join(root, name), 0o666 & ~mask)


def write_text(location, text: str) -> None:
  """Writes a whole file, UTF-8 (a local file is replaced atomically, as a GCS object always is)."""
  if is_url(location):
    epath.Path(location).write_text(text, encoding="utf-8")
    return
  tmp = f"{location}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, location)


def read_bytes(location) -> bytes:
  return epath.Path(location).read_bytes()


def write_bytes(location, data: bytes) -> None:
  """Writes a whole binary file (atomically locally, as write_text)."""
  if is_url(location):
    epath.Path(location).write_bytes(data)
    return
  tmp = f"{location}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, location)


def listdir(location) -> list[str]:
  """The names in a directory, sorted."""
  return sorted(item.name for item in epath.Path(location).iterdir())


def remove(location) -> None:
  epath.Path(location).unlink()


def copy_file(source, destination) -> None:
  """Copies one file between any two locations (local or gs://)."""
  epath.Path(destination).write_bytes(epath.Path(source).read_bytes())


def rename(source, destination) -> None:
  """Moves a file or directory (local: an atomic rename; GCS has no rename, so a copy, then the source
  is removed)."""
  if not is_url(source) and not is_url(destination):
    os.replace(source, destination)
    return
  if isdir(source):
    copy_tree(source, destination)
    epath.Path(source).rmtree()
  else:
    copy_file(source, destination)
    epath.Path(source).unlink()


def copy_tree(source, destination) -> None:
  """Copies a directory's files, recursively, between any two locations (a walk by listing: GCS
  paths take no `**` globs)."""
  for item in epath.Path(source).iterdir():
    target = epath.Path(destination) / item.name
    if item.is_dir():
      copy_tree(item, target)
    else:
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(item.read_bytes())


@contextlib.contextmanager
def local_dir(location, replace: bool = False):
  """A local directory for tools that write only local files (sentencepiece, ArrayRecord, surgery): `location`
  itself when it is local; for a gs:// URL a temporary directory whose tree is copied up to `location` when
  the block ends without an error (a failed block uploads nothing; replace: what was at `location` is
  removed first) and then removed."""
  if not is_url(location):
    makedirs(location)
    yield location
    return
  staging = tempfile.mkdtemp(prefix="yijax-staging-")
  try:
    yield staging
    if replace and exists(location):
      epath.Path(location).rmtree()
    copy_tree(staging, location)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
