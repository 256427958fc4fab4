"""yijax: the Yi family of language models and the studies built on them, in JAX/Flax.

The library reports what it does (resumed runs, skipped damaged checkpoints, study stages, summaries) through
the `yijax` logger. By default those messages print as they are: INFO to stdout, warnings and errors to
stderr, to whatever sys.stdout/sys.stderr are at the time (a terminal, a notebook cell, pytest's capture).
Silence them with `logging.getLogger("yijax").setLevel(logging.WARNING)`, or send them elsewhere by adding
handlers to that logger (a study's stage log does); the root logger is left alone.
"""

import logging
import sys


class _Console(logging.Handler):
  """INFO to the current sys.stdout, WARNING and above to the current sys.stderr, the message alone."""

  def emit(self, record: logging.LogRecord) -> None:
    stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
    try:
      stream.write(self.format(record) + "\n")
      stream.flush()
    except Exception:  # noqa: BLE001 - logging must never raise into the library
      self.handleError(record)


_logger = logging.getLogger("yijax")
if not _logger.handlers:
  _logger.addHandler(_Console())
  _logger.setLevel(logging.INFO)
  _logger.propagate = False
