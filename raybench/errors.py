"""Errors about the user's input or environment (not bugs in raybench).

The command line prints these as one ``error: ...`` line without a traceback: the message
already says which file, key, path or flag is wrong and what would fix it. Everything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class UserInputError(Exception):
    """Bad input or an unusable environment, found before (or instead of) wasted work."""


class StorageError(UserInputError):
    """An experiment storage (folder or ``s3://`` / ``gs://`` URI) cannot be written or read."""


class OutputDirError(UserInputError):
    """An output folder (``--out``) cannot be created or written."""


class ResumeMismatchError(UserInputError, ValueError):
    """A checkpoint to resume from was written by a different trial spec."""


class NoSpaceError(UserInputError, OSError):
    """A write failed (or would fail) for lack of disk space; ``errno`` is ``ENOSPC``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


__all__ = ["NoSpaceError", "OutputDirError", "ResumeMismatchError", "StorageError", "UserInputError"]
