"""The user errors of yijax: bad input (a config, a file, a flag, a checkpoint) that the user can fix.

Every one subclasses `YijaxError`, and its message names the field, file or flag and the fix. The
command line prints these as one line (`yijax CMD: error: ...`) and lets any other exception, a bug,
show its traceback. This module imports nothing, so every layer can raise them.
"""


class YijaxError(Exception):
  """A user error: the message says what is wrong, where, and how to fix it."""


class ConfigError(YijaxError, ValueError):
  """A configuration that cannot work; the message names the field and the fix."""


class CheckpointError(YijaxError, ValueError):
  """A checkpoint or model directory that cannot be read, is damaged or does not match."""


class ConversionError(YijaxError, ValueError):
  """Bad input to a conversion; names the tensor, file or field."""


class PathError(YijaxError, ValueError):
  """A run or model location that cannot be used; names it and the fix."""


class DataError(YijaxError, ValueError):
  """Input data (text, JSON, prepared shards, task files) that cannot be used; names the file."""


class UsageError(YijaxError):
  """A command used wrongly (missing or conflicting flags)."""


class MissingFileError(DataError, FileNotFoundError):
  """A file or directory the input names does not exist; names it and what should be there."""


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint of another model (a parameter missing or shaped differently): a config error,
  not damage, so resuming never sets it aside."""
