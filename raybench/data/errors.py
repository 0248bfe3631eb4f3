"""Errors raised by the data layer.

One exception type for "the files on disk are not what the format promises", so callers
(``raybench data check``, the engine) can tell bad data apart from bugs in raybench.
"""

from __future__ import annotations


class DatasetFormatError(ValueError):
    """A dataset on disk does not follow its format; the message names the file (and row/key)."""


class DownloadError(RuntimeError):
    """A download failed or its result does not match the manifest (size / checksum)."""
