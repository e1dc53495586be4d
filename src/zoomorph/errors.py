"""Errors a user caused (a wrong argument, a bad file, a run that does not fit), as opposed to bugs.

The CLI shows a ZoomorphError as one clear line and exits with 2; any other
exception is a bug in zoomorph and keeps its traceback. ZoomorphError is a
ValueError, so notebook code that catches ValueError keeps working.
"""

from __future__ import annotations


class ZoomorphError(ValueError):
    """Something the user can fix; the message says what and how."""


class InputNotFound(ZoomorphError, FileNotFoundError):
    """A file or folder the user named does not exist (or is not what the command needs)."""


class MissingExtra(ZoomorphError, ImportError):
    """An optional dependency the command needs is not installed; the message names the pip extra."""


class DiskFull(OSError):
    """No space left while writing (ENOSPC, EDQUOT); the message says how far it got and how to go on.
    An OSError, not a ZoomorphError: the disk, not an argument, was at fault (and OSError keeps errno)."""
